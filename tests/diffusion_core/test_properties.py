"""Math properties of diffusion_core that hold whatever the reference implementation says."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_core import (
    BETA_SCHEDULES,
    NoiseSchedule,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    dpm_solver_2m_sample,
    dpm_solver_2m_step,
    min_snr_weight,
    per_sample_mse,
    q_sample,
    sample_loop,
    sample_timesteps,
    sampling_pairs,
    snr,
    to_x0_eps,
    training_target,
)

NAMES = sorted(BETA_SCHEDULES)


@pytest.mark.parametrize("T", [10, 1000])
@pytest.mark.parametrize("name", NAMES)
def test_alpha_bar_monotone_in_unit_interval(name: str, T: int) -> None:
    s = NoiseSchedule.from_name(name, T)
    abar = s.alphas_cumprod
    assert abar.dtype == torch.float64 and abar.shape == (T,)
    assert (abar > 0).all() and (abar <= 1).all()
    assert (abar[1:] < abar[:-1]).all()
    torch.testing.assert_close(
        s.posterior_variance[1:], (1 - abar[:-1]) / (1 - abar[1:]) * s.betas[1:]
    )


def test_cosine_matches_closed_form() -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    f = [math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(1001)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(1000)], dtype=torch.float64)
    # identical until the 0.999 cap kicks in at the very end
    torch.testing.assert_close(s.alphas_cumprod[:990], expected[:990], rtol=1e-12, atol=0)
    assert s.betas.max().item() == pytest.approx(0.999)


def test_q_sample_statistics() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((2, n), 0.7, dtype=torch.float64)
    t = torch.tensor([10, 700])
    xt = q_sample(s, x0, t, torch.randn(2, n, generator=g, dtype=torch.float64))
    abar = s.alphas_cumprod[t]
    torch.testing.assert_close(xt.mean(1), abar.sqrt() * 0.7, atol=5e-3, rtol=0)
    torch.testing.assert_close(xt.var(1), 1 - abar, atol=1.5e-2, rtol=0)  # ~5 standard errors


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_parameterisation_round_trip(prediction_type: str) -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 5, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 5, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 990])
    xt = q_sample(s, x0, t, eps)
    target = training_target(s, x0, eps, t, prediction_type)
    got = to_x0_eps(s, xt, t, target, prediction_type)
    torch.testing.assert_close(got.x0, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got.eps, eps, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_ddim_eta0_perfect_x0_predictor_returns_x0(steps: int) -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 100, 4, generator=g, dtype=torch.float64)
    x_T = torch.randn(3, 100, 4, generator=g, dtype=torch.float64)
    out = sample_loop(
        lambda x, t: x0, s, x_T, sampling_pairs(1000, steps), eta=0.0, prediction_type="sample"
    )
    torch.testing.assert_close(out.prev_sample, x0, rtol=0, atol=1e-12)


def test_batch_of_mixed_t_equals_per_sample_calls() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 3, generator=g)
    x0, eps, z = (torch.randn(3, 2, 3, generator=g) for _ in range(3))
    t, t_prev = torch.tensor([999, 500, 3]), torch.tensor([749, -1, 2])
    batched = ddim_step(s, x, t, t_prev, x0, eps, eta=0.5, noise=z).prev_sample
    single = [
        ddim_step(
            s,
            x[i : i + 1],
            t[i : i + 1],
            t_prev[i : i + 1],
            x0[i : i + 1],
            eps[i : i + 1],
            eta=0.5,
            noise=z[i : i + 1],
        ).prev_sample
        for i in range(3)
    ]
    torch.testing.assert_close(batched, torch.cat(single), rtol=0, atol=0)
    batched = ddpm_step(s, x, t, x0, eps, noise=z).prev_sample
    single = [
        ddpm_step(
            s, x[i : i + 1], t[i : i + 1], x0[i : i + 1], eps[i : i + 1], noise=z[i : i + 1]
        ).prev_sample
        for i in range(3)
    ]
    torch.testing.assert_close(batched, torch.cat(single), rtol=0, atol=0)
    batched = q_sample(s, x0, t, eps)
    single = [q_sample(s, x0[i : i + 1], t[i : i + 1], eps[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), rtol=0, atol=0)


def test_ddpm_final_step_adds_no_noise_and_terminal_ddim_is_x0() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    x, x0, eps = torch.randn(3, 2, 8).unbind(0)
    out = ddpm_step(s, x[None], 0, x0[None], eps[None], noise=torch.full((1, 2, 8), 1e6))
    assert out.prev_sample.abs().max() < 1e3  # the huge noise was masked out at t_prev = -1
    prev = ddim_step(
        s, x[None], 10, -1, x0[None], eps[None], eta=1.0, noise=torch.randn(1, 2, 8)
    ).prev_sample
    torch.testing.assert_close(prev, x0[None])


def _gaussian_denoiser(s: NoiseSchedule, std: float):
    """Exact eps-prediction for data x0 ~ N(0, std^2): eps = sqrt(1-abar) x_t / (abar std^2 + 1 - abar)."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = s.alphas_cumprod[t].reshape(-1, 1)
        return (1 - abar).sqrt() * x / (abar * std**2 + 1 - abar)

    return eps_fn


def test_dpm_solver_converges_on_exact_gaussian_ode() -> None:
    """With an exact denoiser the probability-flow ODE maps x_T to x_T * sqrt(v_0 / v_T), v_t = abar std^2 + 1-abar.

    DPM-Solver++(2M) is second order: its error must shrink fast with steps and beat DDIM at equal steps.
    """
    s = NoiseSchedule.from_name("linear", 1000)
    std = 0.5
    x_T = torch.linspace(-2, 2, 9, dtype=torch.float64).reshape(9, 1)
    v_T = s.alphas_cumprod[-1] * std**2 + 1 - s.alphas_cumprod[-1]
    # the last pair ends at abar = 1 (t_prev = -1), where v = std^2
    exact = x_T * (std**2 / v_T).sqrt()
    eps_fn = _gaussian_denoiser(s, std)
    errs = {}
    for n in (10, 20, 40):
        pairs = sampling_pairs(1000, n, "trailing")
        dpm = dpm_solver_2m_sample(eps_fn, s, x_T, pairs).prev_sample
        ddim = sample_loop(eps_fn, s, x_T, pairs, eta=0.0).prev_sample
        errs[n] = ((dpm - exact).abs().max().item(), (ddim - exact).abs().max().item())
    for n in (10, 20, 40):
        assert errs[n][0] < errs[n][1]
    assert errs[40][0] < errs[10][0] / 4


def test_dpm_step_first_order_equals_ddim_eta0() -> None:
    """Without history, DPM-Solver++ (data prediction) is exactly DDIM with eta = 0."""
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x, x0 = torch.randn(2, 4, 3, dtype=torch.float64).unbind(0)
    t, t_prev = torch.tensor([700, 300, 20, 999]), torch.tensor([500, 100, -1, 0])
    eps = to_x0_eps(s, x, t, x0, "sample").eps
    a = dpm_solver_2m_step(s, x, t, t_prev, x0).prev_sample
    b = ddim_step(s, x, t, t_prev, x0, eps, eta=0.0).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_losses_and_weights() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    t = torch.tensor([0, 500, 999])
    ratio = snr(s, t, dtype=torch.float64)
    torch.testing.assert_close(ratio, s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t]))
    w = min_snr_weight(s, t, gamma=5.0, prediction_type="epsilon").double()
    torch.testing.assert_close(w, ratio.clamp(max=5.0) / ratio, rtol=1e-6, atol=0)
    assert w[0] < 1 and w[2] == pytest.approx(1.0)
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    target[1] *= 2
    torch.testing.assert_close(per_sample_mse(pred, target), torch.tensor([1.0, 4.0]))
    g = torch.Generator().manual_seed(0)
    ts = sample_timesteps(10_000, 1000, generator=g)
    assert (
        ts.dtype == torch.long
        and ts.min() >= 0
        and ts.max() <= 999
        and 450 < ts.float().mean() < 550
    )
    c, u = torch.ones(2), torch.zeros(2)
    torch.testing.assert_close(classifier_free_guidance(c, u, 3.0), torch.full((2,), 4.0))


def test_sample_loop_callback_replaces_state() -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    seen = []

    def callback(state):
        seen.append((state.index, int(state.t[0]), int(state.t_prev[0])))
        return torch.zeros_like(state.step.prev_sample)

    inputs = []
    sample_loop(
        lambda x, t: inputs.append(x.clone()) or x,
        s,
        torch.ones(2, 3),
        sampling_pairs(1000, 3),
        eta=0.0,
        callback=callback,
        prediction_type="sample",
    )
    assert seen == [(0, 999, 665), (1, 665, 332), (2, 332, -1)]
    assert all(bool((x == 0).all()) for x in inputs[1:])


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda s, x: NoiseSchedule.from_name("cosine_typo", 10),
            "unknown noise schedule 'cosine_typo'",
        ),
        (
            lambda s, x: q_sample(s, x, torch.tensor([0, 10]), torch.zeros_like(x)),
            "t value 10 is outside",
        ),
        (
            lambda s, x: q_sample(s, x, torch.tensor([-1, 0]), torch.zeros_like(x)),
            "t value -1 is outside",
        ),
        (lambda s, x: q_sample(s, x, torch.tensor([0, 1]), torch.zeros(2, 4)), "noise shape"),
        (
            lambda s, x: q_sample(s, x, torch.tensor([0, 1, 2]), torch.zeros_like(x)),
            r"shape \(2,\)",
        ),
        (
            lambda s, x: q_sample(s, x, torch.tensor([0.5, 1.0]), torch.zeros_like(x)),
            "integer timesteps",
        ),
        (lambda s, x: ddim_step(s, x, 5, 5, x, x), "t_prev must be < t"),
        (lambda s, x: ddim_step(s, x, 5, -2, x, x), "t_prev value -2"),
        (lambda s, x: ddim_step(s, x, 5, 1, x, x[:, :2]), "must match x_t"),
        (lambda s, x: ddpm_step(s, x, 3, x, x, variance="learned"), "unknown variance"),
        (lambda s, x: to_x0_eps(s, x, 1, x, "eps"), "unknown prediction_type 'eps'"),
        (lambda s, x: sampling_pairs(10, 11), "num_steps must be in"),
        (lambda s, x: sampling_pairs(10, 2, "uniform"), "unknown spacing 'uniform'"),
        (
            lambda s, x: NoiseSchedule.from_betas([0.1, 1.5]),
            r"every beta must be in \(0, 1\]; found 1.5",
        ),
        (lambda s, x: NoiseSchedule.from_name("linear", 10, beta_stop=0.1), "bad parameters"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match: str) -> None:
    s = NoiseSchedule.from_name("linear", 10)
    with pytest.raises(ValueError, match=match):
        call(s, torch.zeros(2, 3))


def test_to_device_and_dtype_follow_input() -> None:
    s = NoiseSchedule.from_name("linear", 10).to("cpu")
    x = torch.zeros(2, 3, dtype=torch.float16)
    assert q_sample(s, x, torch.tensor([1, 2]), torch.zeros_like(x)).dtype == torch.float16
    assert q_sample(s, x.bfloat16(), 3, torch.zeros_like(x).bfloat16()).dtype == torch.bfloat16
