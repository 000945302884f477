"""Loading pretrained backbone weights: timm downloads (online) or a local file.

Resolution order used by the backbone builders:
1. ``weights=PATH`` -> the file is read (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``,
   ``.safetensors``, or a detectron2 ``.pkl``); ``pretrained`` is ignored.
2. ``pretrained=True`` -> timm downloads the named pretrained model. When that fails (offline machine),
   :class:`PretrainedWeightsError` explains how to supply a file instead.
3. ``pretrained=False`` -> random initialisation (training from scratch).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "module")
_STRIP_PREFIXES = ("module.", "backbone.bottom_up.", "bottom_up.", "backbone.")


class PretrainedWeightsError(RuntimeError):
    """Raised when pretrained weights were requested but cannot be obtained."""


def fetch_timm_state_dict(timm_name: str, *, backbone: str) -> dict[str, Tensor]:
    """Downloads ``timm_name`` (e.g. ``"resnet50.tv_in1k"``) with timm and returns its state dict.

    Raises:
        PretrainedWeightsError: when the download fails, with instructions for offline use.
    """
    import timm

    try:
        model = timm.create_model(timm_name, pretrained=True)
    except Exception as exc:  # network errors come in many types (OSError, HTTP errors, hub errors)
        raise PretrainedWeightsError(
            f"Could not download pretrained weights '{timm_name}' for backbone '{backbone}' "
            f"({type(exc).__name__}: {exc}). This machine may be offline. Either download the "
            f"weights elsewhere (e.g. `timm.create_model('{timm_name}', pretrained=True).state_dict()` "
            "saved with torch.save) and pass the file with `model.backbone.weights=/path/to/file.pth`, "
            "or train from scratch with `model.backbone.pretrained=false`."
        ) from exc
    return model.state_dict()


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from ``path`` and unwraps common containers.

    Accepts ``{"model": sd}`` / ``{"state_dict": sd}`` wrappers, strips ``module.`` and
    ``backbone.bottom_up.`` prefixes, converts numpy arrays (detectron2 ``.pkl``) to tensors.

    Raises:
        ValueError: when the file is missing or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"backbone weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    elif path.suffix == ".pkl":
        with path.open("rb") as f:  # detectron2-format pickles (user-supplied, trusted)
            obj = pickle.load(f, encoding="latin1")
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(obj, dict) and any(k in obj for k in _WRAPPER_KEYS):
        key = next(k for k in _WRAPPER_KEYS if k in obj)
        if not isinstance(obj[key], dict):
            break
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"backbone weights file {str(path)!r}: expected a state dict, got {type(obj)}")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            continue
        name = key
        for prefix in _STRIP_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        out[name] = torch.as_tensor(value)
    if not out:
        raise ValueError(f"backbone weights file {str(path)!r} holds no tensors")
    return out


def load_into(
    module: nn.Module,
    state_dict: dict[str, Tensor],
    *,
    source: str,
    rename: Callable[[str], str | None] = lambda k: k,
    min_fraction: float = 0.5,
) -> None:
    """Renames ``state_dict`` keys with ``rename`` (None drops a key) and loads the matching ones.

    Tensors whose shape differs from the module's are skipped. Logs what was not loaded.

    Raises:
        ValueError: when fewer than ``min_fraction`` of the module's parameters got weights (wrong file).
    """
    own = module.state_dict()
    matched: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        name = rename(key)
        if name is None:
            continue
        if name in own and tuple(own[name].shape) == tuple(value.shape):
            matched[name] = value.to(own[name].dtype)
        else:
            skipped.append(key)
    param_names = [n for n, _ in module.named_parameters()]
    loaded = sum(1 for n in param_names if n in matched)
    if param_names and loaded < min_fraction * len(param_names):
        raise ValueError(
            f"{source}: only {loaded}/{len(param_names)} backbone parameters found a matching tensor; "
            f"is this the right file? (first unmatched keys: {skipped[:5]})"
        )
    module.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched]
    if missing or skipped:
        logger.info(
            "%s: loaded %d tensors, %d left at init (e.g. %s), %d unused (e.g. %s)",
            source, len(matched), len(missing), missing[:3], len(skipped), skipped[:3],
        )
