"""The few-shot task's diffusion U-Net: training it on unlabelled images, and loading it for feature
extraction.

Training writes into ``diffusion.output_dir``: ``checkpoint_<iter>.pt`` (the kernel's schema
``{model, ema, optimizer, scaler, state, rng, config, extra}``, atomic; the two newest kept),
``log.jsonl`` (+ TensorBoard), ``samples.png`` and ``unet_ema.pt``, the EMA weights as a plain
guided-diffusion-format state_dict. That last file is what ``diffusion.checkpoint`` of train.py
points at.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from backbones.adm_unet import ADMUNet
from diffusion_core import NoiseSchedule
from tasks.common.checkpoint import checkpoints_newest_first, load_checkpoint, save_checkpoint
from tasks.common.config import config_to_dict
from tasks.common.denoising import denoising_train_step, sample_images, save_image_grid
from tasks.common.dist import barrier, init_distributed, is_main
from tasks.common.ema import ModelEMA
from tasks.common.log import MetricWriter
from tasks.common.progress import progress
from tasks.common.rundir import prepare_run_dir
from tasks.common.training import (
    TrainState,
    make_grad_scaler,
    restore_training_state,
    save_training_state,
)
from tasks.fewshot.config import FewShotConfig, build_unet, image_size_hw

logger = logging.getLogger("fewshot.diffusion")

UNET_FILE = "unet_ema.pt"
# settings that may change between a run and its --resume (how long, how often, what to sample)
RESUMABLE_KEYS = (
    "iterations",
    "log_every",
    "checkpoint_every",
    "num_samples",
    "sample_steps",
    "sampler",
)


def noise_schedule(cfg: FewShotConfig) -> NoiseSchedule:
    """The diffusion model's training schedule (``diffusion.noise_schedule``,
    ``diffusion.num_timesteps``)."""
    return NoiseSchedule.from_name(cfg.diffusion.noise_schedule, cfg.diffusion.num_timesteps)


def _run_config(cfg: FewShotConfig) -> tuple[dict, tuple[str, ...]]:
    """The config saved with the run, and the keys a --resume may change (everything train.py-only
    included)."""
    config = config_to_dict(cfg)
    ignore = [
        "output_dir",
        "diffusion.output_dir",
        "diffusion.checkpoint",
        "diffusion.train_in_process",
    ]
    ignore += [k for k in config if k not in ("seed", "unet", "diffusion", "data")]
    ignore += [f"data.{k}" for k in config["data"] if k not in ("height", "width")]
    ignore += [f"diffusion.{k}" for k in RESUMABLE_KEYS]
    return config, tuple(ignore)


def _batch(images: Tensor, cfg: FewShotConfig, iteration: int, rank: int, size: int) -> Tensor:
    """Images of one step as float in [-1, 1]: a function of (seed, iteration, rank) only, so resume
    is exact."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration * 97 + rank)
    x0 = images[torch.randint(len(images), (size,), generator=gen)].float().div(127.5).sub(1)
    if cfg.diffusion.hflip:
        flip = torch.rand(size, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    return x0


def train_diffusion(
    cfg: FewShotConfig, images: Tensor, *, resume: bool = False, overwrite: bool = False
) -> Path:
    """Train (or ``resume``) the U-Net of ``cfg.unet`` on ``images`` (N, 3, H, W) uint8; returns the
    unet_ema.pt path.

    The loop: a batch from (seed, iteration, rank), one :func:`denoising_train_step` (autocast,
    non-finite check, step, warmed-up EMA), a log record every ``log_every`` steps, an atomic
    checkpoint every ``checkpoint_every`` steps and at the end. Under torchrun every rank draws its
    own ``batch_size / world_size`` images.
    """
    dist = init_distributed(cfg.device)
    device, d = dist.device, cfg.diffusion
    out = Path(d.output_dir)
    if images.ndim != 4 or images.dtype != torch.uint8 or images.shape[2:] != image_size_hw(cfg):
        raise ValueError(
            f"training images must be (N, 3, {cfg.data.height}, {cfg.data.width}) uint8, "
            f"got {tuple(images.shape)} {images.dtype}"
        )
    config, ignore = _run_config(cfg)
    resume_from = prepare_run_dir(
        out, config=config, resume=resume, overwrite=overwrite, ignore_keys=ignore
    )
    torch.manual_seed(cfg.seed + dist.rank)
    model = build_unet(cfg).to(device)
    ema = ModelEMA(model, decay=d.ema_decay)
    schedule = noise_schedule(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    scaler = make_grad_scaler(device, d.amp)
    forward_model: torch.nn.Module = model
    if dist.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    state = TrainState()
    if resume_from is not None:
        state, _ = restore_training_state(
            resume_from,
            model=model,
            optimizer=opt,
            device=device,
            ema=ema,
            scaler=scaler,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        logger.info("resumed from %s at iteration %d", resume_from, state.iteration)
    per_rank = d.batch_size // dist.world_size
    if per_rank < 1:
        raise ValueError(
            f"diffusion.batch_size {d.batch_size} is smaller than the {dist.world_size} ranks"
        )
    writer = MetricWriter(out)
    bar = progress(total=d.iterations, initial=state.iteration, desc="diffusion")
    tic = time.time()
    while state.iteration < d.iterations:
        x0 = _batch(images, cfg, state.iteration, dist.rank, per_rank).to(device)
        logs = denoising_train_step(
            model,
            opt,
            schedule,
            x0,
            iteration=state.iteration,
            ema=ema,
            scaler=scaler,
            amp=d.amp,
            clip_grad_norm=d.clip_grad_norm,
            forward_model=forward_model,
        )
        state.iteration += 1
        bar.update(1)
        if state.iteration % d.log_every == 0 or state.iteration == d.iterations:
            bar.set_postfix(loss=f"{logs['diffusion_loss']:.4f}")
            record = {
                "type": "train",
                **logs,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.time() - tic,
            }
            writer.write(record, step=state.iteration)
        if state.iteration % d.checkpoint_every == 0 or state.iteration == d.iterations:
            _checkpoint(out, model, opt, state, config, ema, scaler)
    bar.close()
    writer.close()
    if is_main():
        save_checkpoint(ema.state_dict(), out / UNET_FILE)
        logger.info(
            "diffusion training done (%d iterations): EMA U-Net weights in %s",
            state.iteration,
            out / UNET_FILE,
        )
    barrier()
    return out / UNET_FILE


def _checkpoint(
    out: Path, model, opt, state: TrainState, config: dict, ema: ModelEMA, scaler
) -> None:
    path = out / f"checkpoint_{state.iteration}.pt"
    save_training_state(
        path, model=model, optimizer=opt, state=state, config=config, ema=ema, scaler=scaler
    )
    if is_main():
        for old in checkpoints_newest_first(out)[
            2:
        ]:  # keep the newest two: a fallback if the newest is damaged
            old.unlink(missing_ok=True)


def write_samples(
    cfg: FewShotConfig, unet: ADMUNet, device: torch.device, path: str | Path
) -> Path:
    """A PNG grid of ``diffusion.num_samples`` samples of ``unet`` (``diffusion.sampler``,
    ``sample_steps``)."""
    images = sample_images(
        unet,
        noise_schedule(cfg).to(device),
        cfg.diffusion.num_samples,
        image_size_hw(cfg),
        steps=cfg.diffusion.sample_steps,
        sampler=cfg.diffusion.sampler,
        device=device,
    )
    return save_image_grid(images, path)


def read_unet_state(path: str | Path) -> dict[str, Tensor]:
    """U-Net weights from ``path``: a plain state_dict (guided-diffusion's ``lsun_bedroom.pt``, our
    unet_ema.pt) or a training checkpoint of this task (its EMA weights)."""
    state = load_checkpoint(path)
    if "ema" in state and "model" in state and "state" in state:
        if state["ema"] is None:
            raise ValueError(f"{path}: training checkpoint without EMA weights")
        return state["ema"]
    return state


def load_unet(cfg: FewShotConfig, device: torch.device | str = "cpu") -> ADMUNet:
    """The U-Net of ``diffusion.checkpoint`` in eval mode; a missing key or a mismatch is a named
    error."""
    path = cfg.diffusion.checkpoint
    if not path:
        raise ValueError(
            "diffusion.checkpoint is empty: train.py does not train a diffusion model as a side "
            "effect. Train one with `python tasks/fewshot/train_diffusion.py --config CONFIG "
            "--data IMAGE_DIR` and pass diffusion.checkpoint=<diffusion.output_dir>/unet_ema.pt "
            "(or a guided-diffusion checkpoint such as lsun_bedroom.pt), or set "
            "diffusion.train_in_process=true to train a small one first, explicitly."
        )
    state = read_unet_state(path)
    model = build_unet(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not match the unet flags of the config: {err}") from None
    return model.to(device).eval()
