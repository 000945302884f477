"""Numerical parity of diffusion_core with diffusers 0.42.1 (a test-only oracle).

Tables: our float64 schedules vs diffusers' float32 ones agree to float32 accumulation error (diffusers runs the
cumprod in float32: 1.3e-5 relative at the cosine tail).

Steps: both sides get the same tables, and diffusers' DDPM/DDIM formulas run on float64 samples as the reference.
Our float32 result must be within 1e-5 of it, our float64 result within 1e-10. (diffusers' own float32 DDIM loses
~1e-4 in sqrt(1 - abar_prev - sigma^2) at eta=1 on the cosine tail, so its float32 output is not the reference.)
DPM-Solver: diffusers upcasts to float32 inside ``step``, so it is compared at float32 only (1e-5); its float64
behaviour is covered by the exact Gaussian-data test in test_properties.py.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_core import (
    NoiseSchedule,
    ddim_step,
    ddpm_step,
    dpm_solver_2m_sample,
    q_sample,
    sampling_pairs,
    sampling_timesteps,
    to_x0_eps,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402

# diffusers' DPM-Solver calls np.array(tensor, copy=False), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DDIM_SCHEDULES = [
    "linear",
    "scaled_linear",
    "squaredcos_cap_v2",
]  # diffusers' DDIM has no "sigmoid"
ALL_SCHEDULES = DDIM_SCHEDULES + ["sigmoid"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _same_tables(ref, name: str, dtype: torch.dtype) -> NoiseSchedule:
    """Give ``ref`` (a diffusers scheduler) and us the same float64 tables.

    float64: our own tables; float32: diffusers' float32 tables (so only the step formulas are compared).
    """
    ours = NoiseSchedule.from_name(name, 1000)
    if dtype == torch.float32:
        ours = NoiseSchedule(betas=ref.betas.double(), alphas_cumprod=ref.alphas_cumprod.double())
    ref.betas = ours.betas.clone()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = ours.alphas_cumprod.clone()
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "one"):
        ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ours


def _inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype)
    out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype)
    return x, out


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_schedule_tables_match(name: str) -> None:
    ref = DDPMScheduler(beta_schedule=name)
    ours = NoiseSchedule.from_name(name, 1000)
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_add_noise(name: str, dtype: torch.dtype) -> None:
    ref = DDPMScheduler(beta_schedule=name)
    ours = _same_tables(ref, name, dtype)
    x0, noise = _inputs(dtype)
    t = torch.tensor([3, 998])
    expected = ref.add_noise(x0.double(), noise.double(), t).to(dtype)
    torch.testing.assert_close(q_sample(ours, x0, t, noise), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("name", DDIM_SCHEDULES)
def test_ddim_trajectory(
    name: str, spacing: str, eta: float, prediction_type: str, dtype: torch.dtype
) -> None:
    """A 10-step DDIM trajectory with a fixed fake model, step by step, given the same variance noise."""
    ref = DDIMScheduler(
        beta_schedule=name,
        timestep_spacing=spacing,
        prediction_type=prediction_type,
        clip_sample=False,
    )
    ours = _same_tables(ref, name, dtype)
    num_steps = 10
    ref.set_timesteps(num_steps)
    x_ref, _ = _inputs(torch.float64, seed=1)
    g = torch.Generator().manual_seed(2)
    for t in ref.timesteps.tolist():
        t_prev = t - 1000 // num_steps  # diffusers derives the previous timestep this way
        t_prev = t_prev if t_prev >= 0 else -1
        model_out = torch.tanh(x_ref * 0.3) + 0.01 * t / 1000  # any fixed function of (x, t)
        noise = torch.randn(x_ref.shape, generator=g, dtype=torch.float64)
        expected = ref.step(model_out, t, x_ref, eta=eta, variance_noise=noise).prev_sample
        x_in, out_in = x_ref.to(dtype), model_out.to(dtype)
        x0, eps = to_x0_eps(ours, x_in, t, out_in, prediction_type)
        got = ddim_step(ours, x_in, t, t_prev, x0, eps, eta=eta, noise=noise.to(dtype)).prev_sample
        torch.testing.assert_close(got, expected.to(dtype), **TOL[dtype])
        x_ref = expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_ddpm_step(name: str, prediction_type: str, variance: str, dtype: torch.dtype) -> None:
    ref = DDPMScheduler(
        beta_schedule=name,
        prediction_type=prediction_type,
        variance_type=variance,
        clip_sample=False,
    )
    ours = _same_tables(ref, name, dtype)
    ref.set_timesteps(1000)
    x64, out64 = _inputs(torch.float64, seed=3)
    x, model_out = x64.to(dtype), out64.to(dtype)
    for t in [999, 500, 37, 1, 0]:
        noise = torch.randn(
            x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64
        )
        gen = torch.Generator().manual_seed(t)  # diffusers draws the same noise from this generator
        expected = ref.step(out64, t, x64, generator=gen).prev_sample
        x0, eps = to_x0_eps(ours, x, t, model_out, prediction_type)
        got = ddpm_step(ours, x, t, x0, eps, noise=noise.to(dtype), variance=variance)
        torch.testing.assert_close(got.prev_sample, expected.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize("num_steps", [1, 2, 5, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", DDIM_SCHEDULES)
def test_dpm_solver_2m(
    name: str, prediction_type: str, spacing: str, num_steps: int, dtype: torch.dtype
) -> None:
    ref = DPMSolverMultistepScheduler(
        beta_schedule=name, prediction_type=prediction_type, timestep_spacing=spacing
    )
    ours = NoiseSchedule(betas=ref.betas.double(), alphas_cumprod=ref.alphas_cumprod.double())
    ref.set_timesteps(num_steps)
    timesteps = ref.timesteps.tolist()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * 0.3) + 0.01 * t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000

    x_T, _ = _inputs(dtype, seed=4)
    expected = x_T.clone()
    for t in timesteps:
        expected = ref.step(model(expected, torch.full((2,), t)), t, expected).prev_sample
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    got = dpm_solver_2m_sample(model, ours, x_T, pairs, prediction_type=prediction_type).prev_sample
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("num_steps", [1, 4, 7, 50, 999])
def test_timesteps_match_diffusers_ddim(spacing: str, num_steps: int) -> None:
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref.set_timesteps(num_steps)
    offset = 1 if spacing == "leading" else 0
    assert (
        sampling_timesteps(1000, num_steps, spacing, steps_offset=offset) == ref.timesteps.tolist()
    )


def test_diffusiondet_pairs_exact() -> None:
    assert sampling_pairs(1000, 1) == [(999, -1)]
    assert sampling_pairs(1000, 4) == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert sampling_pairs(1000, 8) == [
        (999, 874),
        (874, 749),
        (749, 624),
        (624, 499),
        (499, 374),
        (374, 249),
        (249, 124),
        (124, -1),
    ]


def test_leading_offset_past_the_end_is_rejected() -> None:
    # diffusers returns timestep 1000 (out of range for T=1000) here; we refuse it.
    with pytest.raises(ValueError, match="invalid timesteps"):
        sampling_timesteps(1000, 1000, "leading", steps_offset=1)
