"""Forward process and the parameterisation conversions: pure functions over tensors.

Shapes: ``x`` is (B, ...) with any trailing shape (images (B, C, H, W), boxes (B, N, 4)); ``t`` is a LongTensor (B,)
of per-sample training timesteps in [0, T). Schedule tables are gathered at ``t``, cast to ``x.dtype`` and broadcast
over the trailing dims.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from diffusion_core.schedule import NoiseSchedule

__all__ = [
    "PredictionType",
    "PREDICTION_TYPES",
    "X0Eps",
    "q_sample",
    "to_x0_eps",
    "training_target",
    "as_timesteps",
    "gather",
]

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")


class X0Eps(NamedTuple):
    """A model output resolved into the clean-sample and noise predictions, both shaped like x_t."""

    x0: Tensor
    eps: Tensor


def as_timesteps(
    t: Tensor | int,
    batch_size: int,
    num_timesteps: int,
    *,
    device: torch.device,
    name: str = "t",
    allow_final: bool = False,
) -> Tensor:
    """Validate per-sample timesteps and return them as a LongTensor (B,) on ``device``.

    A Python int (or 0-d tensor) is broadcast to the batch. ``allow_final`` admits -1 ("final", alpha_bar = 1).
    """
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer timesteps, got dtype {t.dtype}")
    t = t.to(torch.long)
    if t.ndim == 0:
        t = t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(
            f"{name} must have shape ({batch_size},) to match the batch, got {tuple(t.shape)}"
        )
    low = -1 if allow_final else 0
    if t.numel() and (int(t.min()) < low or int(t.max()) >= num_timesteps):
        bad = t[(t < low) | (t >= num_timesteps)][0].item()
        allowed = f"[{low}, {num_timesteps})"
        raise ValueError(
            f"{name} value {bad} is outside {allowed} for a schedule with T={num_timesteps}"
        )
    return t


def gather(table: Tensor, t: Tensor, like: Tensor, *, final_value: float | None = None) -> Tensor:
    """Index a float64 schedule table at per-sample ``t`` and shape it to broadcast against ``like``.

    Args:
        table: (T,) float64 table.
        t: (B,) LongTensor; entries equal to -1 take ``final_value`` (requires ``final_value``).
        like: (B, ...) tensor whose dtype/device/rank the result takes.

    Returns:
        (B, 1, ..., 1) tensor in ``like.dtype``.
    """
    table = table.to(t.device)
    values = table[t.clamp(min=0)]
    if final_value is not None:
        values = torch.where(t >= 0, values, torch.full_like(values, final_value))
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} shape {tuple(b.shape)} does not match {name_a} shape {tuple(a.shape)}"
        )


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}"
        )


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
    """Sample the forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (DDPM eq. 4).

    Args:
        schedule: the noise schedule.
        x0: (B, ...) clean samples.
        t: (B,) LongTensor of timesteps in [0, T), or an int for the whole batch.
        noise: standard-normal noise shaped like ``x0``.

    Returns:
        x_t, shaped and typed like ``x0``.
    """
    _check_same_shape(x0, noise, "x0", "noise")
    t = as_timesteps(t, x0.shape[0], schedule.num_timesteps, device=x0.device)
    abar = gather(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def to_x0_eps(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor | int,
    model_output: Tensor,
    prediction_type: PredictionType,
) -> X0Eps:
    """Turn a model output of any parameterisation into (x0, eps) predictions.

    ``"epsilon"``: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)   (DDPM eq. 15)
    ``"sample"``:  eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)     (DiffusionDet's pred_x0 objective)
    ``"v_prediction"``: x0 = sqrt(abar) x_t - sqrt(1 - abar) v; eps = sqrt(abar) v + sqrt(1 - abar) x_t
    (Salimans & Ho 2022, v = sqrt(abar) eps - sqrt(1 - abar) x0).
    """
    _check_prediction_type(prediction_type)
    _check_same_shape(x_t, model_output, "x_t", "model_output")
    t = as_timesteps(t, x_t.shape[0], schedule.num_timesteps, device=x_t.device)
    abar = gather(schedule.alphas_cumprod, t, x_t)
    sqrt_a, sqrt_1ma = abar.sqrt(), (1.0 - abar).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - sqrt_1ma * eps) / sqrt_a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - sqrt_a * x0) / sqrt_1ma
    else:
        x0 = sqrt_a * x_t - sqrt_1ma * model_output
        eps = sqrt_a * model_output + sqrt_1ma * x_t
    return X0Eps(x0=x0, eps=eps)


def training_target(
    schedule: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    t: Tensor | int,
    prediction_type: PredictionType,
) -> Tensor:
    """The regression target for a model trained with ``prediction_type`` (diffusers' ``get_velocity`` for v)."""
    _check_prediction_type(prediction_type)
    _check_same_shape(x0, noise, "x0", "noise")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    t = as_timesteps(t, x0.shape[0], schedule.num_timesteps, device=x0.device)
    abar = gather(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0
