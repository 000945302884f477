"""Atomic writes (checkpoints, text, JSON), checkpoints that load with ``torch.load(weights_only=True)``, and RNG
state capture for exact resume.

Every output file of a run goes through :func:`atomic_write_bytes` (a temp file in the same folder, fsync, then
``os.replace``): a kill mid-write leaves the previous file intact, and the new file appears complete or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_png",
    "atomic_write_text",
    "checkpoints_newest_first",
    "latest_checkpoint",
    "latest_loadable_checkpoint",
    "load_checkpoint",
    "remove_orphan_tmp_files",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
TMP_SUFFIX = ".tmp"
logger = logging.getLogger("diffvision.checkpoint")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Run ``write(f)`` on a temp file in ``path``'s folder, fsync, then ``os.replace`` it onto ``path``.

    The data streams straight to disk (no in-memory copy of a large checkpoint); a crash mid-write leaves the
    previous file intact and the new one appears complete or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (NaN/inf refused: ``allow_nan=False``)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_write_png(path: str | Path, image: Any) -> Path:
    """:func:`atomic_write_bytes` for a PNG of ``image`` (a PIL image, or an array ``Image.fromarray`` takes)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors and primitives) atomically with ``torch.save``.

    A crash mid-write leaves the previous checkpoint intact; the new file appears complete or not at all.
    """
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only: tensors and primitives)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated / not a torch file / unsafe pickle content
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint_<iter>.pt`` in ``output_dir``, highest iteration first, then ``last.pt`` if present."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    numbered = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    found = [p for _, p in sorted(numbered, reverse=True)]
    last = output_dir / "last.pt"
    return found + ([last] if last.is_file() else [])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint_<iter>.pt`` in ``output_dir`` (by iteration number), or ``last.pt``, or None."""
    found = checkpoints_newest_first(output_dir)
    return found[0] if found else None


def latest_loadable_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``output_dir`` that loads; each newer one that does not is named in a warning.

    A checkpoint that is corrupt (truncated disk, a copy interrupted by hand) must not stop ``--resume``: the
    previous good one is used instead, and the user is told which file was skipped and why.
    """
    for path in checkpoints_newest_first(output_dir):
        try:
            load_checkpoint(path)
        except ValueError as err:
            logger.warning(
                "skipping unreadable checkpoint %s (%s); trying the previous one", path, err
            )
            continue
        return path
    return None


def remove_orphan_tmp_files(output_dir: str | Path) -> list[Path]:
    """Delete temp files left by writes that were killed mid-way (``.<name>.*.tmp``); returns what was removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    orphans = [
        p for p in output_dir.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
    ]
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
