"""Learning-rate schedule: linear warmup then step decay (detectron2's WarmupMultiStepLR as a function)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

__all__ = ["warmup_step_lr"]


def warmup_step_lr(
    step: int,
    *,
    base_lr: float,
    warmup_iters: int,
    warmup_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> float:
    """Learning rate at iteration ``step`` (0-based).

    During warmup the factor rises linearly from ``warmup_factor`` to 1 (``alpha = step / warmup_iters``); after it,
    the rate is multiplied by ``gamma`` at every milestone already passed.
    """
    factor = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect_right(sorted(milestones), step)
