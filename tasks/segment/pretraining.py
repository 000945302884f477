"""Denoising pretraining (DeP / DDeP) of the segmentation U-Net on a folder of unlabelled images.

Outputs in ``pretrain.output_dir``: ``config.yaml``, ``log.txt``, ``log.jsonl``, ``checkpoint_<iter>.pt``
(the kernel's schema; ``--resume`` continues bit-exactly), ``denoise_<iter>.png`` (rows of noisy input |
predicted clean | clean image) and ``model_final.pt`` (``{"model", "ema", "config"}``, the input of
fine-tuning's ``--pretrained``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from tasks.common.checkpoint import checkpoints_newest_first, save_checkpoint
from tasks.common.data_samplers import TrainSampler
from tasks.common.dist import cleanup, init_distributed, is_main
from tasks.common.ema import ModelEMA, unwrap_model
from tasks.common.log import MetricWriter, setup_logging
from tasks.common.progress import progress
from tasks.common.rundir import prepare_run_dir
from tasks.common.training import TrainState, restore_training_state, save_training_state
from tasks.segment.config import SegmentConfig, stage_config
from tasks.segment.data import UnlabeledDataset, collate
from tasks.segment.datasets import prepare_dataset, pretraining_images
from tasks.segment.steps import (
    build_model,
    lr_factor,
    make_schedule,
    pretrain_step,
    save_triplets,
    step_generator,
)

__all__ = [
    "prune_checkpoints",
    "run_pretraining",
    "seed_everything",
    "train_loader",
    "worker_init",
    "wrap_ddp",
]

KEEP_CHECKPOINTS = 2


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the training threads


def wrap_ddp(model: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    if world_size <= 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def prune_checkpoints(out: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    """Delete all but the ``keep`` newest numbered checkpoints (rank 0, after a successful save)."""
    numbered = [p for p in checkpoints_newest_first(out) if p.name != "last.pt"]
    for old in numbered[keep:]:
        old.unlink(missing_ok=True)


def train_loader(
    dataset: torch.utils.data.Dataset, sampler: TrainSampler, batch: int, workers: int, cuda: bool
):
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        collate_fn=collate,
        worker_init_fn=worker_init,
        pin_memory=cuda,
        prefetch_factor=2 if workers > 0 else None,
    )


def run_pretraining(cfg: SegmentConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Pretrain and return the path of ``model_final.pt`` (every rank returns it; rank 0 writes it)."""
    P = cfg.pretrain  # noqa: N806
    dist = init_distributed(cfg.device)
    out = Path(P.output_dir)
    resume_from = prepare_run_dir(
        out, config=stage_config(cfg, "pretrain"), resume=resume, overwrite=overwrite
    )
    log = setup_logging(out, "diffvision.segment.pretrain")
    prepare_dataset(cfg.data)
    seed_everything(cfg.seed + dist.rank)
    if P.batch_size % dist.world_size:
        raise ValueError(
            f"pretrain.batch_size={P.batch_size} is not divisible by {dist.world_size} processes"
        )
    per_rank = P.batch_size // dist.world_size
    dataset = UnlabeledDataset(
        pretraining_images(cfg.data),
        resize=cfg.data.resize,
        scale_range=P.scale_range,
        crop_hw=tuple(P.crop_size),
        flip=cfg.data.flip,
    )
    sampler = TrainSampler(
        len(dataset), batch_size=per_rank, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
    )
    loader = train_loader(
        dataset, sampler, per_rank, cfg.data.num_workers, dist.device.type == "cuda"
    )
    model = build_model(cfg.model, freeze_encoder=P.mode == "ddep").to(dist.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=P.base_lr, weight_decay=P.weight_decay)
    ema = ModelEMA(model, decay=P.ema_decay) if P.ema_decay > 0 else None
    state = TrainState()
    if resume_from is not None:
        state, _ = restore_training_state(
            resume_from,
            model=model,
            optimizer=optimizer,
            device=dist.device,
            ema=ema,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        log.info("resumed from %s at iteration %d", resume_from, state.iteration)
    forward_model = wrap_ddp(model, dist.device, dist.world_size)
    schedule = make_schedule(cfg.noise)
    vis_images = torch.stack([dataset[(i % len(dataset), i)]["image"] for i in range(4)]).to(
        dist.device
    )
    log.info(
        "%s pretraining: %d images, %d trainable / %d parameters, %d iterations of batch %d on %s",
        P.mode.upper(),
        len(dataset),
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in model.parameters()),
        P.max_iter,
        P.batch_size,
        dist.device,
    )
    writer = MetricWriter(out)
    bar = progress(total=P.max_iter, initial=state.iteration, desc=f"{P.mode} pretrain")
    config = stage_config(cfg, "pretrain")
    while state.iteration < P.max_iter:
        sampler.set_epoch(state.epoch, state.batch_in_epoch)
        for batch in loader:
            lr = P.base_lr * lr_factor(
                state.iteration, max_iter=P.max_iter, warmup_iters=P.warmup_iters, kind="cosine"
            )
            logs = pretrain_step(
                model,
                forward_model,
                optimizer,
                batch["image"].to(dist.device, non_blocking=True),
                noise=cfg.noise,
                schedule=schedule,
                generator=step_generator(cfg.seed, state.iteration, dist.rank, dist.device),
                iteration=state.iteration,
                lr=lr,
                amp=P.amp,
                ema=ema,
                clip_grad_norm=P.clip_grad_norm,
            )
            state.iteration += 1
            state.batch_in_epoch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logs['total_loss']:.4f}")
            it = state.iteration
            if it % P.log_period == 0 or it == P.max_iter:
                writer.write({"type": "pretrain", **logs, "epoch": state.epoch}, step=it)
            if it % P.checkpoint_period == 0 or it == P.max_iter:
                save_training_state(
                    out / f"checkpoint_{it:07d}.pt",
                    model=model,
                    optimizer=optimizer,
                    state=state,
                    config=config,
                    ema=ema,
                )
                if is_main():
                    prune_checkpoints(out)
            if is_main() and (it % P.vis_period == 0 or it == P.max_iter):
                save_triplets(
                    ema.module if ema is not None else model,
                    vis_images,
                    cfg.noise,
                    out / f"denoise_{it:07d}.png",
                    schedule=schedule,
                    seed=cfg.seed,
                    amp=P.amp,
                )
            if it >= P.max_iter:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    writer.close()
    final = out / "model_final.pt"
    if is_main():
        save_checkpoint(
            {
                "model": unwrap_model(model).state_dict(),
                "ema": ema.state_dict() if ema else None,
                "config": config,
            },
            final,
        )
        log.info("wrote %s", final)
    cleanup()
    return final
