"""Training and evaluation loops for DiffusionDet (used by ``train.py`` and ``evaluate.py``).

Frames: the data loader yields images already resized by the transforms; the model's targets are
``boxes_xyxy`` in those resized pixels; :func:`evaluate` asks ``model.inference`` for boxes in the ORIGINAL
image (``output_sizes``: detectron2 ``detector_postprocess`` scale, clip, drop empty) for the evaluator.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from tasks.common.dist import get_rank, is_main, reduce_dict
from tasks.common.ema import ModelEMA, unwrap_model
from tasks.common.schedule import warmup_step_lr
from tasks.detect.config import DetectConfig, SolverConfig


@dataclass
class TrainState:
    """Position in training: ``iteration`` optimiser steps done; ``batch_in_epoch`` of epoch ``epoch`` consumed."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``amp`` in ``"off" | "bf16" | "fp16"``."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_model_inputs(
    batch: Sequence[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch of dataset dicts -> (images float (3, H, W) 0..255 RGB, targets with ``boxes_xyxy``/``labels``)."""
    images = [b["image"].to(device, non_blocking=True).float() for b in batch]
    targets = [
        {
            "boxes_xyxy": b["boxes_xyxy"].to(device, non_blocking=True),
            "labels": b["labels"].to(device, non_blocking=True),
        }
        for b in batch
    ]
    return images, targets


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on every trainable parameter (official ``build_optimizer``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=solver.base_lr, betas=tuple(solver.betas), weight_decay=solver.weight_decay
    )


def learning_rate(iteration: int, solver: SolverConfig) -> float:
    """Linear warmup then step decay at ``solver.steps``."""
    return warmup_step_lr(
        iteration,
        base_lr=solver.base_lr,
        warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor,
        milestones=solver.steps,
        gamma=solver.gamma,
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[dict[str, Any]],
    *,
    iteration: int,
    solver: SolverConfig,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimiser step; returns the rank-averaged losses (plus ``total_loss`` and ``lr``).

    Raises:
        FloatingPointError: the total loss is NaN/inf (the message holds every loss term).
    """
    lr = learning_rate(iteration, solver)
    for group in optimizer.param_groups:
        group["lr"] = lr
    images, targets = to_model_inputs(batch, device)
    with autocast(device, solver.amp):
        losses = model(images, targets)
    total = sum(losses.values())
    if not torch.isfinite(total):
        detail = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration} (rank {get_rank()}): {detail}"
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    if solver.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), solver.clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    reduced = reduce_dict({k: v.detach() for k, v in losses.items()})
    out = {k: float(v) for k, v in reduced.items()}
    out["total_loss"] = sum(out.values())
    out["lr"] = lr
    return out


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    state: TrainState,
    *,
    solver: SolverConfig,
    device: torch.device,
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[TrainState, dict[str, float]], None] | None = None,
) -> bool:
    """Train on the remaining batches of ``state.epoch`` (or until ``solver.max_iter``).

    ``on_step(state, losses)`` runs after every step (logging, checkpoints, periodic evaluation).

    Returns:
        True if the epoch was consumed to its end (then ``state`` points at the start of the next epoch).
    """
    model.train()
    for batch in loader:
        if state.iteration >= solver.max_iter:
            return False
        start = time.perf_counter()
        losses = train_step(
            model,
            optimizer,
            batch,
            iteration=state.iteration,
            solver=solver,
            device=device,
            scaler=scaler,
        )
        if ema is not None:
            ema.update(model)
        state.iteration += 1
        state.batch_in_epoch += 1
        losses["time"] = time.perf_counter() - start
        if on_step is not None:
            on_step(state, losses)
    state.epoch += 1
    state.batch_in_epoch = 0
    return True


def to_evaluator_output(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model detections (already in original-image pixels) -> the evaluator's ``boxes/scores/labels`` dict."""
    return {
        "boxes": det["boxes_xyxy"].float().cpu(),
        "scores": det["scores"].float().cpu(),
        "labels": det["labels"].cpu(),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    evaluator: Any,
    *,
    device: torch.device,
    steps: int | None = None,
    num_boxes: int | None = None,
    seed: int = 0,
    amp: str = "off",
    desc: str = "eval",
) -> dict:
    """Run ``model.inference`` over ``loader`` and return ``evaluator.evaluate()`` (gathered on rank 0).

    The initial noise comes from a generator seeded with ``seed + rank``; the global RNG is left untouched, so
    evaluating in the middle of training does not change the training run.
    """
    module = unwrap_model(model)
    was_training = module.training
    module.eval()
    evaluator.reset()
    generator = torch.Generator(device=device).manual_seed(seed + get_rank())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in tqdm(
            loader, desc=desc, disable=not is_main(), leave=False, dynamic_ncols=True
        ):
            images = [b["image"].to(device).float() for b in batch]
            with autocast(device, amp):
                outputs = module.inference(
                    images,
                    steps=steps,
                    num_boxes=num_boxes,
                    generator=generator,
                    output_sizes=[b["orig_size"] for b in batch],
                )
            evaluator.process(
                [{"image_id": b["image_id"]} for b in batch],
                [to_evaluator_output(o) for o in outputs],
            )
    module.train(was_training)
    return evaluator.evaluate()


def format_losses(losses: dict[str, float]) -> str:
    """``name: value`` pairs for the text log (total first)."""
    keys = ["total_loss"] + sorted(k for k in losses if k not in ("total_loss", "lr", "time"))
    return "  ".join(
        f"{k}: {losses[k]:.4g}" for k in keys if k in losses and math.isfinite(losses[k])
    )


def evaluate_each_steps(
    model: nn.Module,
    loader: Iterable,
    evaluator: Any,
    cfg: DetectConfig,
    *,
    device: torch.device,
    steps_list: Sequence[int],
) -> Iterator[tuple[int, dict]]:
    """:func:`evaluate` once per sampling-steps setting, yielding ``(steps, result)``.

    The evaluator is reused, so ``evaluator.results()`` read inside the loop belongs to that setting.
    """
    for steps in steps_list:
        yield (
            steps,
            evaluate(
                model,
                loader,
                evaluator,
                device=device,
                steps=steps,
                num_boxes=cfg.test.num_proposals,
                seed=cfg.seed,
                amp=cfg.solver.amp,
                desc=f"eval {steps} step(s)",
            ),
        )


def result_summary(result: dict) -> dict:
    """An evaluation result without its per-category breakdown (what metrics.json and the logs keep)."""
    return {k: v for k, v in result.items() if k != "per_category"}


def describe_result(result: dict, data_format: str) -> str:
    """Log text for a result: the familiar COCO table on a new line, else the summary numbers."""
    if "stats" in result and data_format == "coco":
        from evaluation.coco import format_stats

        return "\n" + format_stats(result["stats"])
    return f" {result_summary(result)}"
