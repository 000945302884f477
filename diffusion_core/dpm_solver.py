"""DPM-Solver++(2M): a second-order multistep sampler for data-prediction (Lu et al. 2022, Algorithm 2).

It reaches DDIM-quality samples in 10-25 steps. The step is written with explicit timesteps like the DDIM step:
it moves x_t at ``t`` to ``t_prev`` using the current x0 prediction and, for the second-order correction, the x0
prediction of the previous step made at ``t_last``. With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and
lambda_t = log(alpha_t / sigma_t):

    h = lambda_prev - lambda_t,  r = (lambda_t - lambda_last) / h,  D = x0 + (x0 - x0_last) / (2 r)
    x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D

Without a previous prediction (first step), or when ``t_prev = -1`` (final step, sigma = 0), the step is first
order (D = x0), which is diffusers' ``lower_order_final`` behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffusion_core.loop import LoopState, X0Hook, sample_loop
from diffusion_core.process import PredictionType, X0Eps, as_timesteps, gather
from diffusion_core.sampling import StepOutput, _check_pair
from diffusion_core.schedule import NoiseSchedule

__all__ = ["dpm_solver_2m", "dpm_solver_2m_step", "dpm_solver_2m_sample"]


def _alpha_sigma_lambda(
    schedule: NoiseSchedule, t: Tensor, ref: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    abar = gather(schedule.alphas_cumprod, t, ref, final_value=1.0)
    alpha, sigma = abar.sqrt(), (1.0 - abar).clamp(min=0).sqrt()
    return alpha, sigma, alpha.log() - sigma.log()  # lambda = +inf at the final step


def dpm_solver_2m_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor | int,
    t_prev: Tensor | int,
    x0: Tensor,
    *,
    prev_x0: Tensor | None = None,
    t_last: Tensor | int | None = None,
) -> StepOutput:
    """One DPM-Solver++(2M) step x_t -> x_{t_prev}.

    Args:
        x_t: (B, ...) current sample at ``t``.
        t, t_prev: (B,) LongTensors (or ints); t_prev in [-1, t), -1 = final.
        x0: the model's x0 prediction at ``t``.
        prev_x0: the x0 prediction of the previous step (made at ``t_last`` > t); None gives a first-order step.
        t_last: timestep of ``prev_x0``; required with it.
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} does not match x_t {tuple(x_t.shape)}")
    B, T = x_t.shape[0], schedule.num_timesteps
    t = as_timesteps(t, B, T, device=x_t.device)
    t_prev = as_timesteps(t_prev, B, T, device=x_t.device, name="t_prev", allow_final=True)
    _check_pair(t, t_prev)
    ref = x_t.new_empty((B,) + (1,) * (x_t.ndim - 1), dtype=torch.float64)
    _, sigma_s, lam_s = _alpha_sigma_lambda(schedule, t, ref)
    alpha_p, sigma_p, lam_p = _alpha_sigma_lambda(schedule, t_prev, ref)
    h = lam_p - lam_s
    phi = torch.expm1(-h)  # exp(-h) - 1, exact at h = inf (-> -1)
    dtype = x_t.dtype
    d = x0
    if prev_x0 is not None:
        if t_last is None:
            raise ValueError("t_last is required together with prev_x0")
        if prev_x0.shape != x0.shape:
            raise ValueError(
                f"prev_x0 shape {tuple(prev_x0.shape)} does not match x0 {tuple(x0.shape)}"
            )
        t_last = as_timesteps(t_last, B, T, device=x_t.device, name="t_last")
        if (t_last <= t).any():
            raise ValueError(f"t_last must be > t, got t_last={t_last.tolist()} t={t.tolist()}")
        _, _, lam_l = _alpha_sigma_lambda(schedule, t_last, ref)
        second = t_prev >= 0  # the final step stays first order
        half_inv_r = torch.where(
            second.reshape(ref.shape), 0.5 * h / (lam_s - lam_l), torch.zeros_like(h)
        )
        d = x0 + half_inv_r.to(dtype) * (x0 - prev_x0)
    prev = (sigma_p / sigma_s).to(dtype) * x_t - (alpha_p * phi).to(dtype) * d
    return StepOutput(prev_sample=prev, pred_original_sample=x0)


def dpm_solver_2m(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    t_prev: Tensor,
    pred: X0Eps,
    *,
    last: LoopState | None,
    noise: Callable[[], Tensor],
) -> StepOutput:
    """:func:`dpm_solver_2m_step` as a :func:`diffusion_core.sample_loop` step (``step_fn=dpm_solver_2m``):
    second order from the previous iteration's x0 (``last``), deterministic (``noise`` is never called)."""
    prev_x0, t_last = (last.x0, last.t) if last is not None else (None, None)
    return dpm_solver_2m_step(schedule, x_t, t, t_prev, pred.x0, prev_x0=prev_x0, t_last=t_last)


def dpm_solver_2m_sample(
    denoise_fn: Callable[[Tensor, Tensor], Tensor | tuple[Tensor, Any]],
    schedule: NoiseSchedule,
    x_T: Tensor,
    pairs: Sequence[tuple[int, int]],
    prediction_type: PredictionType = "epsilon",
    callback: Callable[[LoopState], Tensor | None] | None = None,
    *,
    x0_hook: X0Hook | None = None,
) -> StepOutput:
    """Sample with DPM-Solver++(2M) over explicit (t, t_prev) pairs (e.g. from :func:`sampling_pairs`):
    :func:`diffusion_core.sample_loop` with ``step_fn=dpm_solver_2m``.

    The first step and the final step (t_prev = -1) are first order, the rest second order, matching diffusers'
    ``DPMSolverMultistepScheduler`` defaults (solver_order=2, "dpmsolver++", "midpoint", final sigma zero).
    ``x0_hook`` (e.g. ``clip_x0(1.0)``) plays diffusers' ``thresholding`` role on the data prediction.
    """
    return sample_loop(
        denoise_fn,
        schedule,
        x_T,
        pairs,
        callback=callback,
        prediction_type=prediction_type,
        step_fn=dpm_solver_2m,
        x0_hook=x0_hook,
    )
