"""The pieces of DiffusionDet's training and evaluation loops (used by ``train.py`` and ``evaluate.py``).

Every function takes values (lr, amp, clip norm, sampling steps), never a config object. The loop itself is
written out in ``train.py``'s ``do_train``.

Frames: the data loader yields images already resized by the transforms; the model's targets are
``boxes_xyxy`` in those resized pixels; :func:`evaluate` asks ``model.inference`` for boxes in the ORIGINAL
image (``output_sizes``: detectron2 ``detector_postprocess`` scale, clip, drop empty) for the evaluator.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.common.checkpoint import save_checkpoint
from tasks.common.dist import get_rank, is_main
from tasks.common.ema import ModelEMA, unwrap_model
from tasks.common.progress import progress
from tasks.common.training import TrainState, autocast, optimizer_step, save_training_state


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


def train_batches(
    loader: Iterable, sampler: Any, state: TrainState, *, max_iter: int
) -> Iterator[Any]:
    """Training batches from ``state``'s position until ``state.iteration == max_iter``.

    ``state`` advances before each batch is yielded, so inside the loop body ``state.iteration`` is the 1-based
    number of the step about to be taken and ``(state.epoch, state.batch_in_epoch)`` is where a checkpoint taken
    after that step continues from. ``sampler.set_epoch(epoch, start_batch)`` makes a resumed run see exactly the
    batches the uninterrupted run would have seen.
    """
    while state.iteration < max_iter:
        sampler.set_epoch(state.epoch, state.batch_in_epoch)
        for batch in loader:
            state.iteration += 1
            state.batch_in_epoch += 1
            yield batch
            if state.iteration >= max_iter:
                return  # before fetching (decoding) a batch that would not be used
        state.epoch += 1
        state.batch_in_epoch = 0


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[dict[str, Any]],
    *,
    step: int,
    lr: float,
    device: torch.device,
    amp: str = "off",
    clip_grad_norm: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimiser step at 0-based ``step`` with learning rate ``lr``; returns the rank-averaged losses plus
    ``total_loss``, ``lr`` (and ``grad_norm`` when clipping).

    Raises:
        tasks.common.training.NonFiniteLossError: a NaN/inf loss (every term and the step named; nothing stepped).
    """
    images, targets = to_model_inputs(batch, device)
    with autocast(device, amp):
        losses = model(images, targets)
    out = optimizer_step(
        losses, optimizer, iteration=step, scaler=scaler, clip_grad_norm=clip_grad_norm, lr=lr
    )
    return {**out, "lr": lr}


def non_finite_weights(*modules: nn.Module | None) -> list[str]:
    """Names of the floating-point parameters / buffers holding NaN or inf (empty when all are finite)."""
    bad = []
    for module in modules:
        if module is None:
            continue
        for name, value in unwrap_model(module).state_dict().items():
            if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
                bad.append(name)
    return bad


def sampler_options(model: nn.Module, steps: int | None) -> Any:
    """The model's configured sampler options, with ``steps`` sampling steps when given."""
    opts = unwrap_model(model).sampler_options
    return opts if steps is None else dataclasses.replace(opts, steps=steps)


def resume_hint(last_good: Path | None) -> str:
    """What to tell a user whose run stopped on non-finite numbers."""
    if last_good is None:
        return "no checkpoint was written before it, so there is nothing to resume from"
    return (
        f"the last finite checkpoint is {last_good}: continue with --resume, or start a new run "
        f"from its weights with model.weights={last_good} (e.g. with a lower solver.base_lr)"
    )


def checkpoint_if_finite(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict,
    ema: ModelEMA | None,
    scaler: torch.amp.GradScaler | None,
    extra: dict,
    last_good: Path | None,
) -> Path:
    """The kernel's training checkpoint at ``path``, unless the weights (or the EMA's) went non-finite:
    then nothing is written and a FloatingPointError names ``last_good``, the checkpoint to resume from."""
    bad = non_finite_weights(model, ema.module if ema is not None else None)
    if bad:
        raise FloatingPointError(
            f"non-finite weights after iteration {state.iteration} ({len(bad)} tensors, e.g. "
            f"{bad[:3]}); {path.name} was not written; {resume_hint(last_good)}"
        )
    save_training_state(
        path, model=model, optimizer=optimizer, state=state, config=config, ema=ema,
        scaler=scaler, extra=extra,
    )  # fmt: skip
    return path


def save_final_weights(
    path: Path, model: nn.Module, *, label_map: dict, config: dict, last_good: Path | None
) -> None:
    """``{"model": state_dict, "label_map", "config"}`` written atomically by rank 0, only when finite
    (else a FloatingPointError names ``last_good``)."""
    bad = non_finite_weights(model)
    if bad:
        raise FloatingPointError(
            f"non-finite final weights ({len(bad)} tensors, e.g. {bad[:3]}); {path.name} was not "
            f"written; {resume_hint(last_good)}"
        )
    if is_main():
        payload = {
            "model": unwrap_model(model).state_dict(),
            "label_map": label_map,
            "config": config,
        }
        save_checkpoint(payload, path)


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
    opts = sampler_options(module, steps)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in progress(loader, desc=desc, leave=False):
            images = [b["image"].to(device).float() for b in batch]
            with autocast(device, amp):
                outputs = module.inference(
                    images,
                    opts=opts,
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


def evaluate_each_steps(
    model: nn.Module,
    loader: Iterable,
    evaluator: Any,
    *,
    device: torch.device,
    steps_list: Sequence[int],
    num_boxes: int | None = None,
    seed: int = 0,
    amp: str = "off",
) -> Iterator[tuple[int, dict]]:
    """:func:`evaluate` once per sampling-steps setting, yielding ``(steps, result)``.

    The evaluator is reused, so ``evaluator.results()`` read inside the loop belongs to that setting.
    """
    for steps in steps_list:
        result = evaluate(
            model,
            loader,
            evaluator,
            device=device,
            steps=steps,
            num_boxes=num_boxes,
            seed=seed,
            amp=amp,
            desc=f"eval {steps} step(s)",
        )
        yield steps, result


def format_losses(losses: dict[str, float]) -> str:
    """``name: value`` pairs for the text log (total first)."""
    skip = ("total_loss", "lr", "time", "grad_norm")
    keys = ["total_loss"] + sorted(k for k in losses if k not in skip)
    return "  ".join(
        f"{k}: {losses[k]:.4g}" for k in keys if k in losses and math.isfinite(losses[k])
    )


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy / tensor scalars to floats, NaN / inf to None, tuples to lists."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def result_summary(result: dict) -> dict:
    """An evaluation result without its per-class breakdown, JSON-safe (what metrics.json and the logs keep)."""
    return _plain({k: v for k, v in result.items() if k not in ("per_category", "per_class")})


def describe_result(result: dict, evaluator: Any) -> str:
    """Log text for a result: the ``format_table`` beside the evaluator's class (the evaluator protocol), else the
    familiar COCO table from ``stats``, else the summary numbers."""
    module = importlib.import_module(type(evaluator).__module__)
    if hasattr(module, "format_table"):
        return "\n" + module.format_table(result)
    if "stats" in result:
        from evaluation.coco import format_stats

        return "\n" + format_stats(result["stats"])
    return f" {result_summary(result)}"
