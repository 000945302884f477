"""Train an unconditional ADM-U-Net DDPM on a folder of images (epsilon prediction).

    python tasks/fewshot/train_diffusion.py --config configs/fewshot/camvid.yaml
    python tasks/fewshot/train_diffusion.py --data DIR diffusion.iterations=20000
    torchrun --nproc_per_node 8 tasks/fewshot/train_diffusion.py --config ...   # DDP
    python tasks/fewshot/train_diffusion.py --config ... --sample               # PNG grid only

Checkpoints (``output_dir/checkpoint_<iter>.pt`` + ``last.pt``, atomic) hold the model, EMA,
optimiser, AMP scaler, data order and RNG states; a rerun resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # allow `python tasks/fewshot/train_diffusion.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from backbones.adm_unet import ADMUNet
from diffusion_core import (
    NoiseSchedule,
    ddim_step,
    dpm_solver_2m_sample,
    q_sample,
    sample_timesteps,
    sampling_pairs,
    to_x0_eps,
    training_target,
)
from tasks.common.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tasks.common.config import add_config_args, load_config, save_config
from tasks.common.dist import barrier, init_distributed, is_main
from tasks.common.ema import ModelEMA
from tasks.common.log import JsonlLogger, setup_logging
from tasks.fewshot.config import FewShotConfig, build_unet, image_size_hw
from tasks.fewshot.data import image_folder, load_images

logger = logging.getLogger("fewshot.train_diffusion")


def diffusion_loss(model: torch.nn.Module, schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simple DDPM loss: MSE between the predicted and true noise at uniform t (learned-sigma
    channels, when present, are ignored: this trains the epsilon half only)."""
    t = sample_timesteps(x0.shape[0], schedule.num_timesteps, device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t)[:, : x0.shape[1]]
    return F.mse_loss(out.float(), training_target(schedule, x0, noise, t, "epsilon"))


@torch.no_grad()
def sample_images(
    model: ADMUNet, schedule: NoiseSchedule, n: int, size: tuple[int, int], *, steps: int = 50,
    sampler: str = "ddim", seed: int = 0, device: torch.device | str = "cpu", clip: bool = True,
) -> Tensor:
    """``n`` samples (n, 3, H, W) in [-1, 1] with DDIM (eta 0) or DPM-Solver++(2M).

    ``clip`` (DDIM only) clamps the predicted x0 to [-1, 1] at every step and re-derives eps from
    it, guided-diffusion's ``clip_denoised=True``; without it a briefly trained model diverges.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, 3, *size, generator=gen, device=device)
    pairs = sampling_pairs(schedule.num_timesteps, steps)

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return model(x_t, t)[:, :3].float()

    if sampler == "dpm_solver":
        return dpm_solver_2m_sample(eps_fn, schedule, x, pairs).prev_sample.clamp(-1, 1)
    if sampler != "ddim":
        raise ValueError(f"unknown sampler {sampler!r}; expected 'ddim' or 'dpm_solver'")
    abar = schedule.alphas_cumprod.to(device)
    for t_int, t_prev_int in pairs:
        t = torch.full((n,), t_int, dtype=torch.long, device=device)
        x0, eps = to_x0_eps(schedule, x, t, eps_fn(x, t), "epsilon")
        if clip:
            x0 = x0.clamp(-1, 1)
            a = abar[t_int].to(x.dtype)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = ddim_step(schedule, x, t, torch.full_like(t, t_prev_int), x0, eps).prev_sample
    return x.clamp(-1, 1)


def save_grid(images: Tensor, path: str | Path, ncol: int = 8) -> None:
    """Tile (N, 3, H, W) images in [-1, 1] into one PNG."""
    n, _, h, w = images.shape
    rows = math.ceil(n / ncol)
    grid = np.zeros((rows * h, ncol * w, 3), dtype=np.uint8)
    pixels = ((images.float().cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def train_step(
    model: torch.nn.Module,
    ema: ModelEMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    step: int,
    amp: torch.dtype | None,
    forward_model: torch.nn.Module | None = None,
) -> Tensor:
    """One optimiser step on images ``x0`` (B, C, H, W) in [-1, 1]; returns the loss.

    Loss under autocast, a non-finite loss raises, backward/step through ``scaler`` (a disabled scaler is a plain
    step), then the warmed-up EMA update at global ``step``. ``forward_model`` is the DDP wrapper when there is one.
    """
    with torch.autocast(x0.device.type, dtype=amp, enabled=amp is not None):
        loss = diffusion_loss(forward_model or model, schedule, x0)
    if not torch.isfinite(loss):
        raise ValueError(f"non-finite diffusion loss {float(loss)} at iteration {step}")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    ema.update(model, step=step)  # warmed-up decay: short runs are not stuck near the init
    return loss


def _amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or name == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def train(cfg: FewShotConfig) -> Path:
    """Run (or resume) diffusion training; returns the final checkpoint path."""
    dist_info = init_distributed(cfg.device)
    device = dist_info.device
    out_dir = Path(cfg.diffusion.output_dir)
    setup_logging(str(out_dir), "fewshot.train_diffusion")
    if is_main():
        save_config(cfg, out_dir / "config.yaml")
    size = image_size_hw(cfg)
    files = image_folder(cfg.diffusion.data_dir)
    data = load_images(files, size)
    logger.info("%d training images at %s from %s", len(files), size, cfg.diffusion.data_dir)
    torch.manual_seed(cfg.seed + dist_info.rank)
    model = build_unet(cfg).to(device)
    ema = ModelEMA(model, decay=cfg.diffusion.ema_decay)
    schedule = NoiseSchedule.from_name(cfg.diffusion.noise_schedule, cfg.diffusion.num_timesteps).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.diffusion.lr, weight_decay=cfg.diffusion.weight_decay)
    amp = _amp_dtype(cfg.diffusion.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    ddp = model
    if dist_info.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    start = 0
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        state = load_checkpoint(resume, map_location="cpu")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", resume, start)
    per_rank = cfg.diffusion.batch_size // dist_info.world_size
    jsonl = JsonlLogger(out_dir / "metrics.jsonl")
    bar = tqdm(range(start, cfg.diffusion.iterations), initial=start, total=cfg.diffusion.iterations,
               disable=not is_main(), desc="diffusion")
    tic = time.time()
    for it in bar:
        # the batch is a function of (seed, iteration, rank) only, so resume is exact
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it * 97 + dist_info.rank)
        idx = torch.randint(len(data), (per_rank,), generator=gen)
        x0 = data[idx].float().div(127.5).sub(1)
        flip = torch.rand(per_rank, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0).to(device)
        loss = train_step(model, ema, opt, scaler, schedule, x0, step=it, amp=amp, forward_model=ddp)
        if is_main() and (it + 1) % cfg.diffusion.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            jsonl.write({"iteration": it + 1, "loss": loss.item(), "seconds": time.time() - tic})
        if (it + 1) % cfg.diffusion.checkpoint_every == 0 or it + 1 == cfg.diffusion.iterations:
            _save(out_dir, it + 1, model, ema, opt, scaler, cfg)
    barrier()
    return out_dir / "last.pt"


def _save(out_dir: Path, iteration: int, model, ema, opt, scaler, cfg: FewShotConfig) -> None:
    if not is_main():
        return
    state = {
        "iteration": iteration,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "flags": dict(cfg.unet.__dict__),
    }
    save_checkpoint(state, out_dir / f"checkpoint_{iteration}.pt")
    save_checkpoint(state, out_dir / "last.pt")
    for old in out_dir.glob("checkpoint_*.pt"):
        if old.name != f"checkpoint_{iteration}.pt":
            old.unlink(missing_ok=True)


def load_trained_unet(cfg: FewShotConfig, path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True) -> ADMUNet:
    """The (EMA) U-Net of a checkpoint written by :func:`train`, in eval mode."""
    state = load_checkpoint(path, map_location="cpu")
    model = build_unet(cfg)
    model.load_state_dict(state["ema" if use_ema else "model"])
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> None:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--data", default=None, help="folder of training images (overrides diffusion.data_dir)")
    parser.add_argument("--sample", action="store_true", help="only write a PNG grid of samples")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"diffusion.data_dir={args.data}"] if args.data else [])
    cfg = load_config(FewShotConfig, args.config, overrides)
    ckpt = Path(cfg.diffusion.output_dir) / "last.pt"
    if not args.sample:
        ckpt = train(cfg)
    if is_main():
        device = init_distributed(cfg.device).device
        model = load_trained_unet(cfg, ckpt, device)
        schedule = NoiseSchedule.from_name(cfg.diffusion.noise_schedule, cfg.diffusion.num_timesteps).to(device)
        images = sample_images(model, schedule, cfg.diffusion.num_samples, image_size_hw(cfg),
                               steps=cfg.diffusion.sample_steps, sampler=cfg.diffusion.sampler, device=device)
        grid = Path(cfg.diffusion.output_dir) / "samples.png"
        save_grid(images, grid)
        logger.info("wrote %s", grid)


if __name__ == "__main__":
    main()
