"""The training kernel every task's loop is written on (KERNEL READY).

One place for what every training loop needs and what used to drift between copies:

- :class:`TrainState`: the position in training, the only counters a checkpoint needs;
- :func:`autocast` / :func:`make_grad_scaler`: mixed precision from one ``amp`` name (``off | bf16 | fp16``);
- :func:`optimizer_step`: sum the loss terms, one non-finite check (:class:`NonFiniteLossError` names every term and
  the iteration), backward, unscale, clip, step;
- :func:`save_training_state` / :func:`restore_training_state`: one checkpoint schema for every task,
  ``{model, ema, optimizer, scaler, state, rng, config, extra}``, written atomically, restored exactly.

The loops themselves stay in each task's ``train.py`` where they can be read (detectron2's ``do_train`` shape).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tasks.common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tasks.common.dist import all_gather_object, get_rank, is_main, reduce_dict
from tasks.common.ema import ModelEMA, unwrap_model

__all__ = [
    "AMP_MODES",
    "CHECKPOINT_KEYS",
    "NonFiniteLossError",
    "TrainState",
    "autocast",
    "make_grad_scaler",
    "optimizer_step",
    "restore_training_state",
    "save_training_state",
]

AmpMode = Literal["off", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
CHECKPOINT_KEYS: tuple[str, ...] = (
    "model",
    "ema",
    "optimizer",
    "scaler",
    "state",
    "rng",
    "config",
    "extra",
)
logger = logging.getLogger("diffvision.training")


@dataclass
class TrainState:
    """Position in training: ``iteration`` optimiser steps done; ``batch_in_epoch`` batches of ``epoch`` consumed."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; ``losses`` holds every term's value and ``iteration`` where it happened."""

    def __init__(self, losses: Mapping[str, float], iteration: int, rank: int = 0) -> None:
        self.losses = dict(losses)
        self.iteration = iteration
        terms = ", ".join(f"{k}={v:.6g}" for k, v in self.losses.items())
        super().__init__(f"non-finite loss at iteration {iteration} (rank {rank}): {terms}")


def _check_amp(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``amp`` in ``off | bf16 | fp16`` on ``device`` (bf16 also works on CPU)."""
    _check_amp(amp)
    if amp == "off":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, amp: str) -> torch.amp.GradScaler | None:
    """A GradScaler on ``device``'s type for fp16 (the only mode that needs loss scaling), else None."""
    _check_amp(amp)
    return torch.amp.GradScaler(torch.device(device).type) if amp == "fp16" else None


def optimizer_step(
    losses: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    iteration: int,
    params: Iterable[Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float = 0.0,
    lr: float | None = None,
) -> dict[str, float]:
    """One optimiser step on the sum of ``losses`` (scalar tensors).

    Args:
        lr: when given, the learning rate of every parameter group for this step (the loop computes the
            schedule).
        params: the parameters to clip (default: every parameter of ``optimizer``).
        scaler: fp16 loss scaler (None for fp32 / bf16).
        clip_grad_norm: clip the total gradient norm to this value when > 0 (after unscaling).

    Returns:
        The rank-averaged float value of every term, plus ``total_loss`` and, when clipping, ``grad_norm``
        (the norm before clipping).

    Raises:
        NonFiniteLossError: the total loss is NaN/inf; nothing was stepped, the message lists every term.
    """
    total = sum(losses.values())
    if not torch.isfinite(total):
        detail = {k: float(v.detach()) for k, v in losses.items()}
        raise NonFiniteLossError(detail, iteration, get_rank())
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    out: dict[str, float] = {}
    if clip_grad_norm > 0:
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(list(params), clip_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    reduced = reduce_dict({k: v.detach() for k, v in losses.items()})
    terms = {k: float(v) for k, v in reduced.items()}
    return {**terms, "total_loss": sum(terms.values()), **out}


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: Mapping[str, Any],
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path | None:
    """Atomic checkpoint ``{model, ema, optimizer, scaler, state, rng, config, extra}`` for exact continuation.

    Every rank must call it (the RNG states of all ranks are gathered); rank 0 writes. ``config`` is the resolved
    config as a plain dict (``config_to_dict``); ``extra`` holds task data such as the label map. Returns the path on
    rank 0, None elsewhere.
    """
    rngs = all_gather_object(rng_state())
    if not is_main():
        return None
    payload = {
        "model": unwrap_model(model).state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": asdict(state),
        "rng": rngs,
        "config": dict(config),
        "extra": dict(extra or {}),
    }
    return save_checkpoint(payload, path)


def restore_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[TrainState, dict[str, Any]]:
    """Load what :func:`save_training_state` wrote into the given objects and this rank's RNG state.

    Returns:
        ``(state, checkpoint)``; the checkpoint dict gives access to ``config`` and ``extra``.

    Raises:
        ValueError: the file is not a training checkpoint of this schema (names the file and the missing keys), or
            an EMA / scaler is expected but absent.
    """
    ckpt = load_checkpoint(path, map_location=device)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing keys {missing})")
    unwrap_model(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for name, obj in (("ema", ema), ("scaler", scaler)):
        if obj is None:
            continue
        if ckpt[name] is None:
            raise ValueError(f"{path}: the run uses {name} but the checkpoint holds none")
        obj.load_state_dict(ckpt[name])
    rngs = ckpt["rng"]
    if len(rngs) != world_size:
        logger.warning(
            "%s holds %d ranks' RNG states, running with %d", path, len(rngs), world_size
        )
    set_rng_state(rngs[rank % len(rngs)])
    return TrainState(**ckpt["state"]), ckpt
