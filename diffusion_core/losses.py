"""Training-side helpers: timestep sampling, per-sample losses and SNR-based weights."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_core.process import PredictionType, as_timesteps
from diffusion_core.schedule import NoiseSchedule

__all__ = ["sample_timesteps", "per_sample_mse", "snr", "min_snr_weight"]


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform t ~ U{0, ..., T-1}, one per sample: LongTensor (B,)."""
    if batch_size < 0 or num_timesteps < 1:
        raise ValueError(
            f"need batch_size >= 0 and num_timesteps >= 1, got {batch_size}, {num_timesteps}"
        )
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def per_sample_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over all non-batch dims: (B,). The caller reduces (and may weight per sample)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
        )
    loss = (pred - target).float().pow(2).flatten(1).mean(dim=1)
    if weight is not None:
        loss = loss * weight.to(loss)
    return loss


def snr(schedule: NoiseSchedule, t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at per-sample t: (B,)."""
    t = as_timesteps(t, t.shape[0] if t.ndim else 1, schedule.num_timesteps, device=t.device)
    abar = schedule.alphas_cumprod.to(t.device)[t]
    return (abar / (1.0 - abar)).to(dtype)


def min_snr_weight(
    schedule: NoiseSchedule,
    t: Tensor,
    gamma: float = 5.0,
    prediction_type: PredictionType = "epsilon",
) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for an MSE on the given parameterisation: (B,).

    epsilon: min(snr, gamma) / snr;  sample: min(snr, gamma);  v_prediction: min(snr, gamma) / (snr + 1).
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    s = snr(schedule, t, dtype=torch.float64)
    clipped = s.clamp(max=gamma)
    if prediction_type == "epsilon":
        w = clipped / s
    elif prediction_type == "sample":
        w = clipped
    elif prediction_type == "v_prediction":
        w = clipped / (s + 1.0)
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return w.float()
