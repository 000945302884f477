"""Exponential moving average of model weights (buffers copied), for evaluation with smoother weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


class ModelEMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta after every optimiser step; buffers are copied.

    ``d`` is the warmed-up ``min(decay, (1 + k) / (10 + k))`` at global step ``k`` (timm's ``ModelEmaV3.get_decay``
    contract: the caller always passes the step), so short runs are not dominated by the initial weights (with
    decay 0.999, 1,000 un-warmed updates still keep 37 % of them). ``update`` has no default for ``step``: the
    warm-up cannot be forgotten, and passing the global step keeps the EMA exactly resumable without extra state.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update at global step ``step`` (0-based optimiser steps done before it)."""
        if step < 0:
            raise ValueError(f"EMA step must be >= 0, got {step}")
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, *, step: int) -> None:
        """Blend ``model``'s weights in with the warmed-up decay for global step ``step``."""
        decay = self.decay_at(step)
        src = unwrap_model(model).state_dict()
        for name, value in self.module.state_dict().items():
            new = src[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(new.to(value.dtype), alpha=1.0 - decay)
            else:
                value.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
