"""Reverse-process steps (DDIM, DDPM) and timestep pairs; the loop that drives them is in ``loop.py``.

Every step takes the current timestep ``t`` *and* the next one ``t_prev`` explicitly (never derived), per sample,
with ``t_prev = -1`` meaning "final" (alpha_bar = 1). A batch may mix timesteps. Notation follows Song et al. 2021
(DDIM) with alpha_bar_t written ``abar``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffusion_core.process import as_timesteps, gather
from diffusion_core.schedule import NoiseSchedule

__all__ = [
    "StepOutput",
    "Spacing",
    "sampling_timesteps",
    "sampling_pairs",
    "ddim_step",
    "ddpm_step",
    "classifier_free_guidance",
]

Spacing = Literal["linspace", "leading", "trailing"]


class StepOutput(NamedTuple):
    """Result of one reverse step: the next state x_{t_prev} and the x0 prediction it used."""

    prev_sample: Tensor
    pred_original_sample: Tensor


def _check_steps(num_train_timesteps: int, num_steps: int) -> None:
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")


def sampling_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: Spacing = "linspace", steps_offset: int = 0
) -> list[int]:
    """The decreasing timesteps t_1 > ... > t_S visited by a sampler.

    ``"linspace"``: DiffusionDet / lucidrains: ``int(linspace(-1, T-1, S+1))`` reversed, without the final -1
    (S=4 gives 999, 749, 499, 249). ``"leading"`` and ``"trailing"`` as diffusers' ``set_timesteps`` defines them
    (leading: ``arange(S) * (T // S) + steps_offset``; trailing: ``round(arange(T, 0, -T/S)) - 1``).
    """
    _check_steps(num_train_timesteps, num_steps)
    T, S = num_train_timesteps, num_steps
    if spacing == "linspace":
        times = [int(v) for v in torch.linspace(-1, T - 1, S + 1, dtype=torch.float64).tolist()]
        seq = list(reversed(times[1:]))
    elif spacing == "leading":
        seq = [int(v) + steps_offset for v in (np.arange(0, S) * (T // S)).round()[::-1]]
    elif spacing == "trailing":
        seq = [int(v) - 1 for v in np.round(np.arange(T, 0, -T / S))]
    else:
        raise ValueError(
            f"unknown spacing {spacing!r}; expected 'linspace', 'leading' or 'trailing'"
        )
    if any(not 0 <= s < T for s in seq) or any(a <= b for a, b in zip(seq, seq[1:])):
        raise ValueError(
            f"spacing {spacing!r} with offset {steps_offset} gives invalid timesteps {seq}"
        )
    return seq


def sampling_pairs(
    num_train_timesteps: int, num_steps: int, spacing: Spacing = "linspace", steps_offset: int = 0
) -> list[tuple[int, int]]:
    """(t, t_prev) pairs for a sampler, the last pair ending at t_prev = -1 (alpha_bar = 1, "final").

    For DiffusionDet's ``"linspace"`` with T=1000: S=1 -> [(999, -1)];
    S=4 -> [(999, 749), (749, 499), (499, 249), (249, -1)].
    """
    seq = sampling_timesteps(num_train_timesteps, num_steps, spacing, steps_offset)
    return list(zip(seq, seq[1:] + [-1]))


def _draw_noise(like: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is not None:
        if noise.shape != like.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} does not match x_t shape {tuple(like.shape)}"
            )
        return noise.to(device=like.device, dtype=like.dtype)
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=gen_device, dtype=like.dtype).to(
        like.device
    )


def _check_pair(t: Tensor, t_prev: Tensor) -> None:
    if (t_prev >= t).any():
        i = int(torch.nonzero(t_prev >= t)[0, 0])
        raise ValueError(
            f"t_prev must be < t for every sample; sample {i} has t={int(t[i])}, t_prev={int(t_prev[i])}"
        )


def ddim_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor | int,
    t_prev: Tensor | int,
    x0: Tensor,
    eps: Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12 and 16).

    sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev - sigma^2) * eps + sigma * z

    Args:
        schedule: the noise schedule.
        x_t: (B, ...) current sample.
        t, t_prev: (B,) LongTensors (or ints); t in [0, T), t_prev in [-1, t).  -1 is the final step.
        x0, eps: predictions shaped like ``x_t`` (see :func:`to_x0_eps`).
        eta: 0 gives deterministic DDIM, 1 the DDPM-like ancestral variance (DiffusionDet uses 1.0).
        noise: optional z shaped like ``x_t``; else drawn from ``generator`` when eta > 0.

    Returns:
        StepOutput(prev_sample, pred_original_sample=x0).
    """
    if x0.shape != x_t.shape or eps.shape != x_t.shape:
        raise ValueError(
            f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must match x_t {tuple(x_t.shape)}"
        )
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    B, T = x_t.shape[0], schedule.num_timesteps
    t = as_timesteps(t, B, T, device=x_t.device)
    t_prev = as_timesteps(t_prev, B, T, device=x_t.device, name="t_prev", allow_final=True)
    _check_pair(t, t_prev)
    # Coefficients in float64, cast once to x_t's dtype.
    ref = x_t.new_empty((B,) + (1,) * (x_t.ndim - 1), dtype=torch.float64)
    abar = gather(schedule.alphas_cumprod, t, ref)
    abar_prev = gather(schedule.alphas_cumprod, t_prev, ref, final_value=1.0)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    dir_coef = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
    dtype = x_t.dtype
    prev = abar_prev.sqrt().to(dtype) * x0 + dir_coef.to(dtype) * eps
    if eta > 0:
        prev = prev + sigma.to(dtype) * _draw_noise(x_t, noise, generator)
    return StepOutput(prev_sample=prev, pred_original_sample=x0)


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor | int,
    x0: Tensor,
    eps: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small",
    t_prev: Tensor | int | None = None,
) -> StepOutput:
    """One ancestral DDPM step: sample the posterior q(x_{t_prev} | x_t, x0) (DDPM eq. 6-7).

    mean = sqrt(abar_prev) beta'_t / (1 - abar_t) * x0 + sqrt(alpha'_t) (1 - abar_prev) / (1 - abar_t) * x_t,
    with alpha'_t = abar_t / abar_prev and beta'_t = 1 - alpha'_t (equal to alpha_t, beta_t when t_prev = t - 1).
    The std is sqrt(beta-tilde_t) (``"fixed_small"``) or sqrt(beta'_t) (``"fixed_large"``); no noise is added where
    t_prev = -1. ``t_prev`` defaults to t - 1 (respaced sampling may pass any smaller t_prev).

    ``eps`` is accepted for a uniform step signature; the DDPM posterior needs only x0 and x_t.
    """
    if x0.shape != x_t.shape or eps.shape != x_t.shape:
        raise ValueError(
            f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must match x_t {tuple(x_t.shape)}"
        )
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"unknown variance {variance!r}; expected 'fixed_small' or 'fixed_large'")
    B, T = x_t.shape[0], schedule.num_timesteps
    t = as_timesteps(t, B, T, device=x_t.device)
    t_prev = (
        t - 1
        if t_prev is None
        else as_timesteps(t_prev, B, T, device=x_t.device, name="t_prev", allow_final=True)
    )
    _check_pair(t, t_prev)
    ref = x_t.new_empty((B,) + (1,) * (x_t.ndim - 1), dtype=torch.float64)
    abar = gather(schedule.alphas_cumprod, t, ref)
    abar_prev = gather(schedule.alphas_cumprod, t_prev, ref, final_value=1.0)
    alpha_t = abar / abar_prev
    beta_t = 1 - alpha_t
    coef_x0 = abar_prev.sqrt() * beta_t / (1 - abar)
    coef_xt = alpha_t.sqrt() * (1 - abar_prev) / (1 - abar)
    dtype = x_t.dtype
    prev = coef_x0.to(dtype) * x0 + coef_xt.to(dtype) * x_t
    if (t_prev >= 0).any():
        var = (
            beta_t
            if variance == "fixed_large"
            else ((1 - abar_prev) / (1 - abar) * beta_t).clamp(min=1e-20)
        )
        not_final = (t_prev >= 0).to(torch.float64).reshape(ref.shape)
        prev = prev + (var.sqrt() * not_final).to(dtype) * _draw_noise(x_t, noise, generator)
    return StepOutput(prev_sample=prev, pred_original_sample=x0)


def classifier_free_guidance(eps_cond: Tensor, eps_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): (w + 1) * eps_cond - w * eps_uncond."""
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(
            f"eps_cond {tuple(eps_cond.shape)} and eps_uncond {tuple(eps_uncond.shape)} differ"
        )
    return (guidance_scale + 1.0) * eps_cond - guidance_scale * eps_uncond
