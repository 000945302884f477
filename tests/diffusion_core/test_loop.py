"""The one sampling loop: x0 hook (diffusers' clip_sample), noise sources, aux outputs, pluggable steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from diffusion_core import (
    NoiseSchedule,
    clip_x0,
    ddim,
    dpm_solver_2m,
    dpm_solver_2m_sample,
    randn,
    sample_loop,
    sampling_pairs,
    sampling_timesteps,
)

REPO = Path(__file__).resolve().parents[2]


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in denoiser whose x0 prediction leaves [-1, 1] (so clipping matters)."""
    return 3.0 * torch.tanh(x * 0.7) + 0.002 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("use_clipped", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_clip_hook_matches_diffusers_clip_sample(
    prediction_type: str, eta: float, use_clipped: bool
) -> None:
    diffusers = pytest.importorskip("diffusers")
    steps = 6
    ref = diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="leading",
    )
    ours = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    ref.betas, ref.alphas_cumprod = ours.betas.clone(), ours.alphas_cumprod.clone()
    ref.alphas = 1.0 - ref.betas
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(steps)]
    expected = x_T.clone()
    for i, t in enumerate(ref.timesteps.tolist()):
        expected = ref.step(
            _model(expected, torch.full((2,), t)),
            t,
            expected,
            eta=eta,
            use_clipped_model_output=use_clipped,
            variance_noise=noises[i],
        ).prev_sample
    drawn = iter(noises)
    pairs = sampling_pairs(1000, steps, "leading")
    assert [p[0] for p in pairs] == ref.timesteps.tolist()
    got = sample_loop(
        _model,
        ours,
        x_T,
        pairs,
        eta=eta,
        prediction_type=prediction_type,
        x0_hook=clip_x0(1.0),
        use_clipped_model_output=use_clipped,
        noise_fn=lambda shape, device, dtype: next(drawn),
    ).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_clip_changes_the_result_and_bounds_x0() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    x_T = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    seen = []
    pairs = sampling_pairs(1000, 4)
    clipped = sample_loop(
        _model,
        s,
        x_T,
        pairs,
        prediction_type="sample",
        x0_hook=clip_x0(1.0),
        callback=lambda st: seen.append(st.x0.abs().max().item()),
    ).prev_sample
    plain = sample_loop(_model, s, x_T, pairs, prediction_type="sample").prev_sample
    assert max(seen) <= 1.0 and plain.abs().max() > 1.0
    assert clipped.abs().max() <= 1.0


def test_per_sample_generators_make_a_batch_equal_its_parts() -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x_T = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(2))
    pairs = sampling_pairs(1000, 5)

    def gens(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    both = sample_loop(_model, s, x_T, pairs, eta=1.0, generator=gens(7, 8)).prev_sample
    first = sample_loop(_model, s, x_T[:1], pairs, eta=1.0, generator=gens(7)).prev_sample
    second = sample_loop(_model, s, x_T[1:], pairs, eta=1.0, generator=gens(8)).prev_sample
    assert torch.equal(both, torch.cat([first, second]))
    with pytest.raises(ValueError, match="got 1 generators for a batch of 2"):
        sample_loop(_model, s, x_T, pairs, eta=1.0, generator=gens(7))


def test_randn_per_generator_rows_do_not_depend_on_the_batch() -> None:
    both = randn((2, 5, 4), generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    second = randn((1, 5, 4), generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(both[1], second[0])
    one = randn((2, 3), generator=torch.Generator().manual_seed(4))
    assert torch.equal(one, torch.randn(2, 3, generator=torch.Generator().manual_seed(4)))


def test_aux_outputs_reach_the_callback_and_noise_is_drawn_only_when_used() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    seen = []

    def denoise(x: torch.Tensor, t: torch.Tensor):
        return _model(x, t), {"t": int(t[0])}

    def no_noise(shape, device, dtype):
        raise AssertionError("eta = 0 must not draw noise")

    sample_loop(
        denoise,
        s,
        torch.ones(2, 3),
        sampling_pairs(1000, 3),
        noise_fn=no_noise,
        callback=lambda st: seen.append((st.index, st.aux["t"], int(st.t_prev[0]))),
    )
    assert seen == [(0, 999, 665), (1, 665, 332), (2, 332, -1)]
    calls = []

    def counting(shape, device, dtype):
        calls.append(tuple(shape))
        return torch.zeros(shape, device=device, dtype=dtype)

    sample_loop(_model, s, torch.ones(2, 3), sampling_pairs(1000, 3), eta=1.0, noise_fn=counting)
    assert calls == [(2, 3), (2, 3)]  # no draw for the final step (sigma = 0 there)


def test_dpm_solver_is_a_step_of_the_same_loop() -> None:
    s = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x_T = torch.randn(2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pairs = sampling_pairs(1000, 12, "trailing")
    a = dpm_solver_2m_sample(_model, s, x_T, pairs).prev_sample
    b = sample_loop(_model, s, x_T, pairs, step_fn=dpm_solver_2m).prev_sample
    assert torch.equal(a, b)
    c = sample_loop(_model, s, x_T, pairs, step_fn=ddim(0.0)).prev_sample
    assert torch.equal(c, sample_loop(_model, s, x_T, pairs, eta=0.0).prev_sample)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eta=0.5, step_fn=dpm_solver_2m), "either eta"),
        (
            dict(generator=torch.Generator(), noise_fn=lambda *a: None),
            "either generator or noise_fn",
        ),
        (dict(eta=-1.0), "eta must be >= 0"),
    ],
)
def test_bad_loop_arguments_raise(kwargs: dict, match: str) -> None:
    s = NoiseSchedule.from_name("linear", 10)
    with pytest.raises(ValueError, match=match):
        sample_loop(_model, s, torch.zeros(2, 3), sampling_pairs(10, 2), **kwargs)


def test_callback_and_denoiser_errors_name_the_problem() -> None:
    s = NoiseSchedule.from_name("linear", 10)
    with pytest.raises(ValueError, match=r"callback returned shape \(1, 3\)"):
        sample_loop(
            _model,
            s,
            torch.zeros(2, 3),
            sampling_pairs(10, 2),
            callback=lambda st: torch.zeros(1, 3),
        )
    with pytest.raises(TypeError, match="denoise_fn must return"):
        sample_loop(lambda x, t: [x], s, torch.zeros(2, 3), sampling_pairs(10, 2))
    with pytest.raises(ValueError, match="clip limit"):
        clip_x0(0.0)
    assert sampling_timesteps(10, 2) == [9, 4]


def test_no_other_sampling_loop_in_the_repository() -> None:
    """Steps are called only by the core loop: a loop anywhere else would call a step function itself."""
    pattern = re.compile(r"\b(ddim_step|ddpm_step|dpm_solver_2m_step)\(")
    offenders = []
    for folder in ("tasks", "backbones", "evaluation", "benchmarks", "diffusion_core"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel in (
                "diffusion_core/sampling.py",
                "diffusion_core/loop.py",
                "diffusion_core/dpm_solver.py",
            ):
                continue
            if pattern.search(path.read_text(encoding="utf-8")):
                offenders.append(rel)
    assert offenders == []
