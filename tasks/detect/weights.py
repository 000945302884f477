"""Loading detector weights: official DiffusionDet model-zoo files as they are, and our own checkpoints.

Accepted files (the format is detected from the keys, not the file name):

- official DiffusionDet / detectron2 files (``diffdet_coco_res50.pth``, ``_res101``, ``_swinbase``,
  ``diffdet_lvis_*``, ``diffdet_coco_res50_300boxes.pth``): ``{"model": state_dict, ...}`` with detectron2 key
  names (``backbone.fpn_lateral2.weight`` ...) and the schedule buffers (``alphas_cumprod`` ...). Keys are mapped
  with ``convert_official.convert_key``; the stored ``alphas_cumprod`` must equal the configured schedule.
  ``.pth`` is read with ``torch.load(weights_only=True)``, a detectron2 ``.pkl`` with a restricted unpickler;
- our checkpoints: ``{"model": ..., "ema": ..., "config": ..., "extra": {"label_map": ...}}`` (the training
  kernel's schema; the EMA weights are used when present, ``use_ema=False`` takes ``model``), or a plain state dict.

Loading is strict: missing or unexpected keys, a shape mismatch or a non-finite tensor is an error listing them.
The one exception: with ``allow_class_change=True`` a different number of classes (fine-tuning a full detector
on another dataset) re-initialises the class logits (``head.head_series.*.class_logits``), logs it, and loads
everything else.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from backbones.pretrained import read_weights_object
from tasks.detect.convert_official import convert_key

logger = logging.getLogger(__name__)

_OFFICIAL_MARKERS = re.compile(
    r"^(backbone\.fpn_(lateral|output)\d|alphas_cumprod$|betas$|"
    r"backbone\.bottom_up\.layers\.\d)"
)
_CLASS_LOGITS = re.compile(r"^head\.head_series\.\d+\.class_logits\.(weight|bias)$")
_LIST_LIMIT = 20


class WeightsLoadError(ValueError):
    """A weights file that does not fit the model; the message names the file and every offending key."""


@dataclass
class LoadedWeights:
    """What :func:`load_detector_weights` loaded.

    Attributes:
        path: the file.
        format: ``"official"`` (detectron2 names, mapped on the fly) or ``"ours"``.
        source: which entry of the file was loaded (``"model"``, ``"ema"`` or ``"state_dict"``).
        reinitialised: keys left at their fresh initialisation (class logits after a class-count change).
        label_map: the checkpoint's label map (``extra.label_map`` or ``label_map``), None if absent.
        config: the checkpoint's config dict, None if absent.
    """

    path: str
    format: Literal["official", "ours"]
    source: str
    reinitialised: list[str] = field(default_factory=list)
    label_map: Any = None
    config: dict | None = None

    @property
    def class_names(self) -> list[str] | None:
        """Class names in contiguous-label order when the label map holds them (``{"names": [...]}``, or a list
        of ``{"name": ...}`` / of strings), else None."""
        lm = self.label_map
        if isinstance(lm, dict) and isinstance(lm.get("names"), (list, tuple)):
            return [str(n) for n in lm["names"]]
        if isinstance(lm, (list, tuple)) and all(isinstance(e, dict) and "name" in e for e in lm):
            return [str(e["name"]) for e in lm]
        if isinstance(lm, (list, tuple)) and all(isinstance(e, str) for e in lm):
            return list(lm)
        return None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f" ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _unwrap(obj: Any, path: str, use_ema: bool) -> tuple[dict[str, Any], str, dict]:
    """(state dict, entry name, the wrapping checkpoint dict or {})."""
    if not isinstance(obj, dict):
        raise WeightsLoadError(f"weights file {path!r}: expected a dict, got {type(obj).__name__}")
    if use_ema and isinstance(obj.get("ema"), dict) and obj["ema"]:
        return obj["ema"], "ema", obj
    if isinstance(obj.get("model"), dict):
        return obj["model"], "model", obj
    if obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj, "state_dict", {}
    raise WeightsLoadError(
        f"weights file {path!r}: expected a state dict or a checkpoint with 'model' "
        f"(top-level keys: {_listing(sorted(map(str, obj)))})"
    )


def is_official_state_dict(state: dict[str, Any]) -> bool:
    """True for detectron2 / official DiffusionDet key names (FPN ``fpn_lateral*``, schedule buffers, Swin
    ``layers.N``), False for ours."""
    return any(_OFFICIAL_MARKERS.match(k) for k in state)


def _check_schedule(state: dict[str, Any], model: nn.Module, path: str) -> None:
    stored = state.get("alphas_cumprod")
    schedule = getattr(model, "schedule", None)
    if stored is None or schedule is None:
        return
    stored = torch.as_tensor(stored, dtype=torch.float64).cpu()
    ours = schedule.alphas_cumprod.to(device="cpu", dtype=torch.float64)
    if stored.shape != ours.shape or not torch.allclose(stored, ours, rtol=0, atol=1e-6):
        raise WeightsLoadError(
            f"weights file {path!r}: its diffusion schedule (alphas_cumprod, {tuple(stored.shape)}) differs from the "
            f"configured one ({tuple(ours.shape)}); set model.diffusion.schedule / num_timesteps to the file's"
        )


def _to_ours(state: dict[str, Any], official: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = convert_key(key) if official else key
        if new is not None and hasattr(value, "shape"):
            out[new] = torch.as_tensor(value)
    return out


def _finite(value: Tensor) -> bool:
    if not value.is_floating_point() or value.numel() == 0:
        return True
    low, high = torch.aminmax(value.detach())  # one pass; NaN propagates into both
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _class_change(key: str, value: Tensor, own: Tensor) -> bool:
    return (
        bool(_CLASS_LOGITS.match(key))
        and value.shape[1:] == own.shape[1:]
        and value.shape[0] != own.shape[0]
    )


def _match(
    state: dict[str, Tensor], own: dict[str, Tensor], path: str, allow_class_change: bool
) -> tuple[dict[str, Tensor], list[str]]:
    """Strict key/shape/finiteness check; returns the state to load and the re-initialised keys."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reinit, wrong = [], []
    for key in sorted(set(state) & set(own)):
        if state[key].shape == own[key].shape:
            continue
        if allow_class_change and _class_change(key, state[key], own[key]):
            reinit.append(key)
        else:
            wrong.append(f"{key} {tuple(state[key].shape)} vs model {tuple(own[key].shape)}")
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if wrong:
        hint = (
            "; a different number of classes can be fine-tuned with allow_class_change=True"
            if any(_CLASS_LOGITS.match(w.split()[0]) for w in wrong)
            else ""
        )
        problems.append(f"shape mismatches ({len(wrong)}): {_listing(wrong)}{hint}")
    if problems:
        raise WeightsLoadError(
            f"weights file {path!r} does not fit the model: " + "; ".join(problems)
        )
    bad = sorted(k for k, v in state.items() if not _finite(v))
    if bad:
        raise WeightsLoadError(
            f"weights file {path!r} holds NaN/Inf values in {len(bad)} tensors: {_listing(bad)}"
        )
    merged = {k: (own[k] if k in reinit else v) for k, v in state.items()}
    return merged, reinit


def load_detector_weights(
    model: nn.Module,
    path: str | Path,
    *,
    allow_class_change: bool = False,
    use_ema: bool = True,
) -> LoadedWeights:
    """Loads a detector checkpoint into ``model`` strictly, in place (any device; tensors are copied over).

    Args:
        model: a ``DiffusionDet`` built from the config the weights belong to.
        path: an official DiffusionDet ``.pth`` / detectron2 ``.pkl``, our checkpoint, or a state dict file.
        allow_class_change: re-initialise the class logits when the file has another number of classes
            (fine-tuning); otherwise that mismatch is an error.
        use_ema: take the checkpoint's EMA weights when it holds them.

    Returns:
        :class:`LoadedWeights` (format, re-initialised keys, label map and config stored in the file).

    Raises:
        WeightsLoadError: missing / unexpected keys, shape mismatches, non-finite values, another schedule.
        backbones.pretrained.UnsafeWeightsFileError: the file holds more than tensors, arrays and plain metadata.
    """
    path = str(path)
    obj = read_weights_object(path)
    raw, source, wrapper = _unwrap(obj, path, use_ema)
    official = is_official_state_dict(raw)
    if official:
        _check_schedule(raw, model, path)
    own = {k: v.detach() for k, v in model.state_dict().items()}
    converted = _to_ours(raw, official)
    state, reinit = _match(converted, own, path, allow_class_change)
    model.load_state_dict(state, strict=True)
    if reinit:
        logger.warning(
            "%s: the file has %d classes, the model %d: re-initialised %s; every other tensor loaded",
            path,
            converted[reinit[0]].shape[0],
            own[reinit[0]].shape[0],
            ", ".join(reinit),
        )
    extra = wrapper.get("extra") if isinstance(wrapper.get("extra"), dict) else {}
    label_map = extra.get("label_map", wrapper.get("label_map"))
    config = wrapper.get("config") if isinstance(wrapper.get("config"), dict) else None
    logger.info("loaded %s weights (%s) from %s", "official" if official else "our", source, path)
    return LoadedWeights(
        path=path,
        format="official" if official else "ours",
        source=source,
        reinitialised=reinit,
        label_map=label_map,
        config=config,
    )
