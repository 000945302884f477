"""Supervised fine-tuning of the whole U-Net with a fresh segmentation head (cross-entropy, poly LR).

Outputs in ``finetune.output_dir``: ``config.yaml``, ``splits/`` (the label-fraction files used), ``log.txt``,
``log.jsonl`` (train records and every evaluation), ``checkpoint_<iter>.pt`` (``--resume``), ``metrics.json``
(the final evaluation) and ``model_final.pt`` (``{"model", "config", "extra"}``: what ``predict.py`` loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tasks.common.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from tasks.common.data_samplers import InferenceSampler, TrainSampler
from tasks.common.dist import cleanup, init_distributed, is_main
from tasks.common.ema import unwrap_model
from tasks.common.log import MetricWriter, setup_logging
from tasks.common.progress import progress
from tasks.common.rundir import prepare_run_dir
from tasks.common.training import TrainState, restore_training_state, save_training_state
from tasks.segment.config import SegmentConfig, stage_config
from tasks.segment.data import DatasetInfo, LabelAudit, SegmentationDataset, collate
from tasks.segment.datasets import labelled_frames, prepare_dataset, train_frames
from tasks.segment.model import SegUNet, load_pretrained, pretrained_state
from tasks.segment.pretraining import (
    prune_checkpoints,
    seed_everything,
    train_loader,
    worker_init,
    wrap_ddp,
)
from tasks.segment.steps import build_model, evaluate, finetune_step, lr_factor

__all__ = ["format_metrics", "load_pretraining", "run_finetuning"]

ARCH_KEYS = ("encoder", "decoder_channels", "noise_conditioning")


def load_pretraining(
    model: SegUNet, path: str | Path, cfg: SegmentConfig, *, use_ema: bool
) -> None:
    """Encoder + decoder from a pretraining checkpoint (its EMA weights when ``use_ema`` and present)."""
    ckpt = load_checkpoint(path)
    saved = (ckpt.get("config") or {}).get("model", {})
    current = {
        "encoder": cfg.model.encoder,
        "decoder_channels": list(cfg.model.decoder_channels),
        "noise_conditioning": cfg.model.noise_conditioning,
    }
    diff = [
        f"model.{k}: {saved[k]!r} (checkpoint) vs {current[k]!r}"
        for k in ARCH_KEYS
        if k in saved
        and (list(saved[k]) if isinstance(saved[k], (list, tuple)) else saved[k]) != current[k]
    ]
    if diff:
        raise ValueError(
            f"--pretrained {path} was trained with another network: " + "; ".join(diff)
        )
    load_pretrained(
        model, pretrained_state(ckpt, source=str(path), prefer_ema=use_ema), source=str(path)
    )


def _val_loader(cfg: SegmentConfig, rank: int, world: int) -> tuple[DataLoader, DatasetInfo]:
    frames, info = labelled_frames(cfg.data, cfg.data.val_split)
    if cfg.data.max_val_images is not None:
        frames = frames[: cfg.data.max_val_images]
    dataset = SegmentationDataset(frames, info, train=False, resize=cfg.data.resize)
    loader = DataLoader(
        dataset,
        batch_size=cfg.finetune.eval_batch_size,
        sampler=InferenceSampler(len(dataset), rank, world),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
    )
    return loader, info


def _optimizer(cfg: SegmentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    F = cfg.finetune  # noqa: N806
    if F.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=F.base_lr, momentum=F.momentum, weight_decay=F.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=F.base_lr, weight_decay=F.weight_decay)


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small text table: mIoU (+ iIoU / categories) and per-class IoU, in percent."""
    head = [f"mIoU {100 * metrics['mIoU']:.2f}"]
    for key in ("iIoU", "mIoU_category", "iIoU_category", "pixel_acc"):
        if key in metrics:
            head.append(f"{key} {100 * metrics[key]:.2f}")
    rows = [f"  {name:<16s} {100 * v:6.2f}" for name, v in metrics.get("per_class", {}).items()]
    return " | ".join(head) + "\n" + "\n".join(rows)


def run_finetuning(
    cfg: SegmentConfig, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Fine-tune, evaluate every ``eval_period`` and at the end; returns the final metrics (rank 0)."""
    F = cfg.finetune  # noqa: N806
    dist = init_distributed(cfg.device)
    out = Path(F.output_dir)
    config = stage_config(cfg, "finetune")
    resume_from = prepare_run_dir(out, config=config, resume=resume, overwrite=overwrite)
    log = setup_logging(out, "diffvision.segment.finetune")
    prepare_dataset(cfg.data)
    seed_everything(cfg.seed + dist.rank)
    frames, info, split_file = train_frames(cfg.data, split_dir=out / "splits")
    if F.batch_size % dist.world_size:
        raise ValueError(
            f"finetune.batch_size={F.batch_size} is not divisible by {dist.world_size} processes"
        )
    per_rank = F.batch_size // dist.world_size
    train_set = SegmentationDataset(
        frames,
        info,
        train=True,
        resize=cfg.data.resize,
        scale_range=cfg.data.scale_range,
        crop_hw=tuple(cfg.data.crop_size),
        flip=cfg.data.flip,
    )
    sampler = TrainSampler(
        len(train_set),
        batch_size=min(per_rank, len(train_set) // dist.world_size),
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    loader = train_loader(
        train_set, sampler, sampler.batch_size, cfg.data.num_workers, dist.device.type == "cuda"
    )
    val_loader, _ = _val_loader(cfg, dist.rank, dist.world_size)
    model = build_model(cfg.model, num_classes=info.num_classes, init_encoder=F.pretrained is None)
    if F.pretrained:
        load_pretraining(model, F.pretrained, cfg, use_ema=F.use_ema)
    model.to(dist.device)
    optimizer = _optimizer(cfg, model)
    state = TrainState()
    if resume_from is not None:
        state, _ = restore_training_state(
            resume_from,
            model=model,
            optimizer=optimizer,
            device=dist.device,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        log.info("resumed from %s at iteration %d", resume_from, state.iteration)
    forward_model = wrap_ddp(model, dist.device, dist.world_size)
    log.info(
        "fine-tuning %s on %d labelled frames (%s, split %s) from %s; %d iterations of batch %d",
        info.name,
        len(frames),
        cfg.data.label_fraction,
        split_file,
        F.pretrained or f"encoder_init={cfg.model.encoder_init}",
        F.max_iter,
        sampler.batch_size * dist.world_size,
    )
    writer, audit = MetricWriter(out), LabelAudit()
    bar = progress(total=F.max_iter, initial=state.iteration, desc="finetune")
    metrics: dict[str, Any] = {}
    last_eval = -1
    while state.iteration < F.max_iter:
        sampler.set_epoch(state.epoch, state.batch_in_epoch)
        for batch in loader:
            audit.add(batch)
            lr = F.base_lr * lr_factor(
                state.iteration,
                max_iter=F.max_iter,
                warmup_iters=F.warmup_iters,
                kind="poly",
                power=F.poly_power,
            )
            logs = finetune_step(
                forward_model,
                optimizer,
                batch["image"].to(dist.device, non_blocking=True),
                batch["label"].to(dist.device, non_blocking=True),
                ignore_index=info.ignore_index,
                iteration=state.iteration,
                lr=lr,
                amp=F.amp,
                clip_grad_norm=F.clip_grad_norm,
            )
            state.iteration += 1
            state.batch_in_epoch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logs['total_loss']:.4f}")
            it = state.iteration
            if it % F.log_period == 0 or it == F.max_iter:
                writer.write({"type": "finetune", **logs, "epoch": state.epoch}, step=it)
            if it % F.checkpoint_period == 0 or it == F.max_iter:
                save_training_state(
                    out / f"checkpoint_{it:07d}.pt",
                    model=model,
                    optimizer=optimizer,
                    state=state,
                    config=config,
                )
                if is_main():
                    prune_checkpoints(out)
            if it % F.eval_period == 0 or it == F.max_iter:
                metrics = evaluate(model, val_loader, info, device=dist.device, amp=F.amp)
                last_eval = it
                if is_main():
                    writer.write({"type": "eval", **metrics}, step=it)
                    log.info(
                        "iteration %d on %s:\n%s", it, cfg.data.val_split, format_metrics(metrics)
                    )
            if it >= F.max_iter:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    writer.close()
    audit.report("training labels")
    if last_eval != state.iteration:  # resumed a finished run: evaluate once more (every rank)
        metrics = evaluate(model, val_loader, info, device=dist.device, amp=F.amp)
    if is_main():
        extra = {
            "dataset": info.name,
            "class_names": list(info.class_names),
            "ignore_index": info.ignore_index,
            "palette": [list(c) for c in info.palette],
            "export_ids": list(info.export_ids) if info.export_ids else None,
        }
        save_checkpoint(
            {"model": unwrap_model(model).state_dict(), "config": config, "extra": extra},
            out / "model_final.pt",
        )
        atomic_write_json(
            out / "metrics.json",
            {
                "iteration": state.iteration,
                "labelled_frames": len(frames),
                "split_file": str(split_file),
                **metrics,
            },
        )
    cleanup()
    return metrics
