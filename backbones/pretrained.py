"""Loading pretrained backbone weights: timm downloads (online) or a local file.

Resolution order used by the backbone builders:
1. ``weights=PATH`` -> the file is read with :func:`read_weights_object` (``.pth``/``.pt``/``.bin`` via
   ``torch.load(weights_only=True)``, ``.safetensors``, or a detectron2 ``.pkl`` through a restricted unpickler
   that admits only numpy arrays and plain containers); ``pretrained`` is ignored. Nothing in a weights file
   can run code: anything else is refused with :class:`UnsafeWeightsFileError` naming the file.
2. ``pretrained=True`` -> timm downloads the named pretrained model. When that fails (offline machine),
   :class:`PretrainedWeightsError` explains how to supply a file instead.
3. ``pretrained=False`` -> random initialisation (training from scratch).
"""

from __future__ import annotations

import collections
import importlib
import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "module")
_STRIP_PREFIXES = ("module.", "backbone.bottom_up.", "bottom_up.", "backbone.")


class PretrainedWeightsError(RuntimeError):
    """Raised when pretrained weights were requested but cannot be obtained."""


class UnsafeWeightsFileError(ValueError):
    """A weights file holds something other than tensors, numpy arrays and plain metadata (it could run code)."""


# (module, name) pairs a detectron2 .pkl needs: numpy arrays, dtypes and scalars, OrderedDict, and the latin-1
# bytes codec that protocol-2 pickles use for raw array data. Nothing else is ever imported.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_PICKLE_ALLOWED` globals (the ``pickle`` docs' recipe)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if module == "collections":
            return collections.OrderedDict
        if module.startswith("numpy.core"):  # numpy 1.x names; numpy 2 keeps them in numpy._core
            try:
                module = module.replace("numpy.core", "numpy._core", 1)
                return getattr(importlib.import_module(module), name)
            except ImportError:
                module = module.replace("numpy._core", "numpy.core", 1)
        return getattr(importlib.import_module(module), name)


def _refuse(path: Path, exc: Exception) -> UnsafeWeightsFileError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UnsafeWeightsFileError(
        f"weights file {str(path)!r}: refusing to load it: it holds objects other than tensors, numpy arrays and "
        f"plain metadata ({reason}). If you trust the file, load it yourself and save its state dict with "
        "torch.save(state_dict, 'clean.pth')."
    )


def read_weights_object(path: str | Path) -> Any:
    """Reads a weights file without executing code from it; returns the stored object (usually a dict).

    torch files (zip or legacy) go through ``torch.load(weights_only=True)``; ``.safetensors`` through safetensors;
    other pickles (detectron2 ``.pkl``) through a restricted unpickler admitting numpy arrays and plain containers.

    Raises:
        ValueError: the file does not exist or cannot be parsed (naming the file).
        UnsafeWeightsFileError: the file holds anything else (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".pkl" and not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            try:
                return _RestrictedUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as exc:
                if "is not allowed" in str(exc):
                    raise _refuse(path, exc) from exc
                raise ValueError(
                    f"weights file {str(path)!r} is not a readable pickle: {exc}"
                ) from exc
            except (EOFError, ValueError, TypeError, AttributeError) as exc:
                raise ValueError(
                    f"weights file {str(path)!r} is not a readable pickle: {exc}"
                ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise _refuse(path, exc) from exc
        raise ValueError(f"weights file {str(path)!r} is not a readable torch file: {exc}") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"weights file {str(path)!r} is not a readable torch file: {exc}") from exc


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
        UnsafeWeightsFileError: when the file holds anything but tensors, arrays and plain metadata.
    """
    path = Path(path)
    obj = read_weights_object(path)
    while isinstance(obj, dict) and any(k in obj for k in _WRAPPER_KEYS):
        key = next(k for k in _WRAPPER_KEYS if k in obj)
        if not isinstance(obj[key], dict):
            break
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(
            f"backbone weights file {str(path)!r}: expected a state dict, got {type(obj)}"
        )
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
            source,
            len(matched),
            len(missing),
            missing[:3],
            len(skipped),
            skipped[:3],
        )
