"""Minimal torch.distributed helper for the evaluators (core packages do not import ``tasks``)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_on_main(obj: Any) -> list[Any] | None:
    """Gather ``obj`` from every rank.

    Returns:
        The list of per-rank objects (rank order) on rank 0, ``None`` on other ranks. Without an initialised
        process group (or with one rank) returns ``[obj]``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts if dist.get_rank() == 0 else None
