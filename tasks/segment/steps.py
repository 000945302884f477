"""The pieces both stages share: model building, the denoising loss, one step of each stage, evaluation,
and the noisy / predicted-clean / clean triplet picture.

The loops themselves are in :mod:`tasks.segment.pretraining` and :mod:`tasks.segment.finetuning`; the
optimiser step, mixed precision, EMA and checkpoints are the shared kernel's (:mod:`tasks.common.training`).
The denoising loss lives here rather than in :mod:`tasks.common.denoising` because DDeP's corruptions
(scaled / simple additive noise, no timestep input) are not the DDPM loss that module implements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_core import NoiseSchedule
from diffusion_core.corruption import Corruption, corrupt, estimate_clean
from tasks.common.denoising import save_image_grid
from tasks.common.ema import ModelEMA
from tasks.common.training import autocast, optimizer_step
from tasks.segment.config import ModelConfig, NoiseConfig
from tasks.segment.data import DatasetInfo
from tasks.segment.model import SegUNet, load_encoder_weights

__all__ = [
    "build_model",
    "denoise_loss",
    "evaluate",
    "finetune_step",
    "lr_factor",
    "make_schedule",
    "pretrain_step",
    "save_triplets",
    "step_generator",
]


def build_model(
    cfg: ModelConfig,
    *,
    num_classes: int = 0,
    freeze_encoder: bool = False,
    init_encoder: bool = True,
) -> SegUNet:
    """The U-Net of ``cfg``: pretraining (``num_classes=0``: denoising head) or fine-tuning (segmentation head).

    With ``init_encoder`` the encoder starts from ``cfg.encoder_init``: ``"random"``, ``"imagenet"`` (smp
    download; a clear error offline) or a local file (encoder state dict or a DeP checkpoint).
    """
    init = cfg.encoder_init if init_encoder else "random"
    model = SegUNet(
        encoder_name=cfg.encoder,
        num_classes=num_classes,
        denoise_head=num_classes == 0,
        decoder_channels=cfg.decoder_channels,
        noise_conditioning=cfg.noise_conditioning,
        encoder_weights="imagenet" if init == "imagenet" else None,
    )
    if init not in ("random", "imagenet"):
        load_encoder_weights(model, init)
    model.set_encoder_frozen(freeze_encoder)
    return model


def make_schedule(cfg: NoiseConfig) -> NoiseSchedule | None:
    return (
        NoiseSchedule.from_name(cfg.schedule, cfg.num_timesteps)
        if cfg.kind == "diffusion"
        else None
    )


def step_generator(seed: int, iteration: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, iteration, rank): noise is reproducible and resume-exact."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + iteration) * 1009 + rank)


def denoise_loss(
    model: nn.Module,
    images: Tensor,
    cfg: NoiseConfig,
    *,
    schedule: NoiseSchedule | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Corruption, Tensor]:
    """Corrupt ``images`` (B, C, H, W) in [-1, 1], predict eps, return (scalar loss, corruption, eps_pred)."""
    c = corrupt(
        images,
        kind=cfg.kind,
        sigma=cfg.sigma,
        schedule=schedule,
        t_range=cfg.t_range,
        generator=generator,
    )
    pred = model(c.noisy, task="denoise", noise_level=c.noise_scale).float()
    target = c.noise.float()
    if cfg.loss == "l2":
        loss = F.mse_loss(pred, target)
    elif cfg.loss == "l1":
        loss = F.l1_loss(pred, target)
    else:
        loss = F.huber_loss(pred, target, delta=cfg.huber_delta)
    return loss, c, pred


def lr_factor(
    step: int, *, max_iter: int, warmup_iters: int, kind: str, power: float = 0.9
) -> float:
    """Linear warm-up then ``"cosine"`` (to 0) or ``"poly"`` ((1 - step / max_iter) ** power)."""
    warm = min(1.0, (step + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    progress = min(step / max(max_iter, 1), 1.0)
    decay = (
        0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else (1 - progress) ** power
    )
    return warm * decay


def pretrain_step(
    model: nn.Module,
    forward_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    *,
    noise: NoiseConfig,
    schedule: NoiseSchedule | None,
    generator: torch.Generator,
    iteration: int,
    lr: float,
    amp: str,
    ema: ModelEMA | None,
    clip_grad_norm: float = 0.0,
) -> dict[str, float]:
    """One denoising step (kernel autocast + optimizer_step, then the warmed-up EMA update)."""
    with autocast(images.device, amp):
        loss, _, _ = denoise_loss(
            forward_model, images, noise, schedule=schedule, generator=generator
        )
    logs = optimizer_step(
        {"denoise_loss": loss},
        optimizer,
        iteration=iteration,
        clip_grad_norm=clip_grad_norm,
        lr=lr,
    )
    if ema is not None:
        ema.update(model, step=iteration)
    return {**logs, "lr": lr}


def finetune_step(
    forward_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    *,
    ignore_index: int,
    iteration: int,
    lr: float,
    amp: str,
    clip_grad_norm: float = 0.0,
    ema: ModelEMA | None = None,
    model: nn.Module | None = None,
) -> dict[str, float]:
    """One cross-entropy step (pixels labelled ``ignore_index`` do not count)."""
    with autocast(images.device, amp):
        logits = forward_model(images, task="segment")
    # mean over labelled pixels; a crop of only ignore pixels gives 0 (not NaN) and no host sync is needed
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    loss = total / (labels != ignore_index).sum().clamp(min=1)
    logs = optimizer_step(
        {"ce_loss": loss}, optimizer, iteration=iteration, clip_grad_norm=clip_grad_norm, lr=lr
    )
    if ema is not None:
        ema.update(model or forward_model, step=iteration)
    return {**logs, "lr": lr}


@torch.no_grad()
def predict_labels(
    model: nn.Module, image: Tensor, valid_hw: tuple[int, int], out_hw: tuple[int, int], amp: str
) -> Tensor:
    """(H, W) int64 training ids for one padded image (1, 3, H32, W32): crop the valid part, upsample logits
    bilinearly to ``out_hw`` (the label's size), argmax."""
    with autocast(image.device, amp):
        logits = model(image, task="segment")
    logits = logits[..., : valid_hw[0], : valid_hw[1]].float()
    logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0]


def _make_evaluator(info: DatasetInfo, device: torch.device) -> Any:
    if info.name == "cityscapes":
        from evaluation.cityscapes import CityscapesEvaluator

        return CityscapesEvaluator(pred_ids="train", device=device)
    from evaluation.semseg import SemSegEvaluator

    return SemSegEvaluator(info.num_classes, info.ignore_index, info.class_names, device=device)


def _process(ev: Any, gt: Tensor, pred: Tensor, item: Mapping[str, Any]) -> None:
    """Feed one image to an evaluator (protocol: ``process(inputs, outputs)``); Cityscapes gets the raw
    labelIds and instanceIds as ground truth and trainId predictions."""
    cityscapes = "label_ids" in item
    inp = {"sem_seg": item["label_ids"] if cityscapes else gt, "file_name": item["name"]}
    if cityscapes and item.get("instances") is not None:
        inp["instances"] = item["instances"]
    ev.process([inp], [{"sem_seg": pred}])


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator's protocol result (fractions: "mIoU", "per_class", Cityscapes also "iIoU",
    "mIoU_category", "iIoU_category", "per_category", ...) with non-scalar extras (confusion matrix) dropped."""
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, Mapping):
            out[k] = {name: float(x) for name, x in v.items()}
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, info: DatasetInfo, *, device: torch.device, amp: str = "off"
) -> dict[str, Any]:
    """Metrics over a loader of evaluation items (batch size 1). Every rank must call it (ranks gathered);
    the metrics are complete on rank 0."""
    was_training = model.training
    model.eval()
    ev = _make_evaluator(info, device)
    from tasks.segment.data import LabelAudit

    audit = LabelAudit()
    for batch in loader:
        audit.add(batch)
        for i in range(batch["image"].shape[0]):
            item = {k: (v[i] if isinstance(v, (list, Tensor)) else v) for k, v in batch.items()}
            label = item["label"].to(device)
            pred = predict_labels(
                model,
                item["image"][None].to(device),
                tuple(item["valid_hw"]),
                tuple(label.shape),
                amp,
            )
            _process(ev, label, pred, item)
    audit.report("evaluation")
    model.train(was_training)
    result = ev.evaluate()
    return summarize(result) if result else {}


@torch.no_grad()
def save_triplets(
    model: nn.Module,
    images: Tensor,
    cfg: NoiseConfig,
    path: str | Path,
    *,
    schedule: NoiseSchedule | None,
    seed: int = 0,
    amp: str = "off",
) -> Path:
    """A PNG with one row per image: noisy input | predicted clean image | clean image (all in [-1, 1])."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    with autocast(images.device, amp):
        _, c, pred = denoise_loss(model, images, cfg, schedule=schedule, generator=gen)
    clean_hat = estimate_clean(c, pred.to(c.noisy.dtype))
    model.train(was_training)
    rows = torch.stack([c.noisy, clean_hat, images], dim=1).flatten(0, 1).float().clamp(-1, 1)
    return save_image_grid(rows, path, ncol=3)
