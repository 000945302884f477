"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and RNG state capture for exact resume."""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["latest_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact; the new file appears complete or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only: tensors and primitives)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated / not a torch file / unsafe pickle content
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint_<iter>.pt`` in ``output_dir`` (by iteration number), or ``last.pt``, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    numbered = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    if numbered:
        return max(numbered)[1]
    last = output_dir / "last.pt"
    return last if last.is_file() else None


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
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
