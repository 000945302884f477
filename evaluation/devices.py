"""The evaluation package's one device resolver and its CPU threading helper (core packages never import
``tasks``, so this is separate from ``tasks.common.dist``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run CPU torch work with one intra-op thread: the work is many small kernels, and OpenMP thread
    hand-offs cost more than they save (5-20x slower on a loaded 2-core machine). Restored afterwards."""
    if device.type != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
