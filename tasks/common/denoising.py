"""A generic denoising-diffusion trainer any task can import: loss, one training step, image
sampling, a grid.

The model is any ``model(x_t, t) -> (B, >= C, H, W)`` network predicting the noise ``eps`` in its
first ``C`` channels (extra channels, e.g. guided-diffusion's learned-sigma half, are ignored).
Images are ``(B, C, H, W)`` in [-1, 1]; ``t`` is a LongTensor (B,) of integer timesteps of
``schedule``.

Example (one step of a task's loop; the loop itself stays in the task)::

    ema = ModelEMA(model, decay=0.999)
    scaler = make_grad_scaler(device, amp)
    for iteration in range(start, total):
        logs = denoising_train_step(model, optimizer, schedule, next_batch(), iteration=iteration,
                                    ema=ema, scaler=scaler, amp=amp)
    grid = sample_images(ema.module, schedule, 16, (H, W), device=device)
    save_image_grid(grid, out / "samples.png")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_core import (
    NoiseSchedule,
    clip_x0,
    dpm_solver_2m_sample,
    q_sample,
    sample_loop,
    sample_timesteps,
    sampling_pairs,
    training_target,
)
from tasks.common.checkpoint import atomic_write_png
from tasks.common.ema import ModelEMA
from tasks.common.training import autocast, optimizer_step

__all__ = [
    "LOSSES",
    "SAMPLERS",
    "denoising_train_step",
    "diffusion_loss",
    "sample_images",
    "save_image_grid",
]

LOSSES: tuple[str, ...] = ("mse", "l1")
SAMPLERS: tuple[str, ...] = ("ddim", "dpm_solver")


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    loss: str = "mse",
) -> Tensor:
    """The simple DDPM loss: ``loss(model(x_t, t)[:, :C], eps)`` at timesteps drawn uniformly.

    Args:
        model: ``model(x_t, t) -> (B, >= C, H, W)``; the first ``C`` output channels are the eps
            prediction.
        schedule: the training noise schedule (``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``).
        x0: clean images (B, C, H, W) in [-1, 1].
        generator: source of t and eps (None: the global RNG); on ``x0``'s device.
        loss: ``"mse"`` (DDPM's L_simple) or ``"l1"``.

    Returns:
        A scalar float32 tensor.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if x0.ndim != 4:
        raise ValueError(f"x0 must be (B, C, H, W), got shape {tuple(x0.shape)}")
    t = sample_timesteps(x0.shape[0], schedule.num_timesteps, device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t)
    if (
        out.ndim != 4
        or out.shape[0] != x0.shape[0]
        or out.shape[1] < x0.shape[1]
        or out.shape[2:] != x0.shape[2:]
    ):
        raise ValueError(
            f"model output {tuple(out.shape)} does not fit images {tuple(x0.shape)} "
            "(need >= C channels)"
        )
    target = training_target(schedule, x0, noise, t, "epsilon")
    pred = out[:, : x0.shape[1]].float()
    return F.mse_loss(pred, target.float()) if loss == "mse" else F.l1_loss(pred, target.float())


def denoising_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    iteration: int,
    ema: ModelEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "off",
    clip_grad_norm: float = 0.0,
    forward_model: nn.Module | None = None,
    generator: torch.Generator | None = None,
    loss: str = "mse",
) -> dict[str, float]:
    """One optimiser step of denoising training on ``x0`` (B, C, H, W) in [-1, 1].

    The loss runs under :func:`tasks.common.training.autocast`;
    :func:`tasks.common.training.optimizer_step` does the non-finite check (``NonFiniteLossError``
    naming the term and ``iteration``), backward, unscale, clip and step; then the EMA takes the
    warmed-up update at ``iteration``.

    Args:
        model: the trained module (the EMA's source; unwrapped).
        forward_model: what the loss calls, e.g. the DDP wrapper of ``model`` (default ``model``).
        iteration: the global step index (0-based) of this update.

    Returns:
        ``{"diffusion_loss", "total_loss"}`` (+ ``"grad_norm"`` when clipping) as rank-averaged
        floats.
    """
    with autocast(x0.device, amp):
        value = diffusion_loss(forward_model or model, schedule, x0, generator=generator, loss=loss)
    logs = optimizer_step(
        {"diffusion_loss": value},
        optimizer,
        iteration=iteration,
        scaler=scaler,
        clip_grad_norm=clip_grad_norm,
    )
    if ema is not None:
        ema.update(model, step=iteration)
    return logs


@torch.no_grad()
def sample_images(
    model: nn.Module,
    schedule: NoiseSchedule,
    n: int,
    size: tuple[int, int],
    *,
    steps: int = 50,
    sampler: str = "ddim",
    seed: int = 0,
    device: torch.device | str = "cpu",
    clip: bool = True,
    channels: int = 3,
) -> Tensor:
    """``n`` unconditional samples (n, channels, H, W) in [-1, 1] with DDIM (eta 0) or
    DPM-Solver++(2M).

    ``clip`` (DDIM) clamps the predicted x0 to [-1, 1] at every step and re-derives eps from it, as
    guided-diffusion's ``clip_denoised=True``; without it a briefly trained model diverges. The
    start noise is drawn from a generator seeded with ``seed`` on ``device``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if n <= 0:
        raise ValueError(f"number of samples must be positive, got {n}")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, channels, *size, generator=gen, device=device)
    pairs = sampling_pairs(schedule.num_timesteps, steps)

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return model(x_t, t)[:, :channels].float()

    if sampler == "dpm_solver":
        return dpm_solver_2m_sample(eps_fn, schedule, x, pairs).prev_sample.clamp(-1, 1)
    hook = (
        clip_x0(1.0) if clip else None
    )  # eps re-derived from the clipped x0 (use_clipped_model_output)
    return sample_loop(eps_fn, schedule, x, pairs, eta=0.0, x0_hook=hook).prev_sample.clamp(-1, 1)


def image_grid(images: Tensor, *, ncol: int = 8) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] (C = 1 or 3) into one (rows * H, ncol * W, 3) uint8
    array."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    ncol = max(1, min(ncol, n))
    rows = math.ceil(n / ncol)
    grid = np.zeros((rows * h, ncol * w, 3), dtype=np.uint8)
    pixels = (
        images.detach().float().cpu().expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy() + 1
    ) * 127.5
    pixels = pixels.round().clip(0, 255).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    return grid


def save_image_grid(images: Tensor, path: str | Path, *, ncol: int = 8) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid, atomically; returns the path."""
    return atomic_write_png(path, image_grid(images, ncol=ncol))
