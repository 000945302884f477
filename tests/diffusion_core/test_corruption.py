"""Denoising-pretraining corruptions: formulas, statistics, variance preservation, determinism, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from diffusion_core import NoiseSchedule, q_sample
from diffusion_core.corruption import (
    additive_corruption,
    corrupt,
    diffusion_corruption,
    estimate_clean,
    scaled_corruption,
    sigma_to_gamma,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scaled_formula_and_gamma() -> None:
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    eps = torch.randn(x.shape, generator=_gen())
    c = scaled_corruption(x, 0.22, noise=eps)
    assert_close(c.noisy, (x + 0.22 * eps) / math.sqrt(1 + 0.22**2))
    assert c.noise is not None and torch.equal(c.noise, eps)
    assert_close(c.gamma, torch.full((2,), sigma_to_gamma(0.22)))
    assert math.isclose(sigma_to_gamma(0.22), 0.953834, rel_tol=1e-5)  # 1 / 1.0484


def test_simple_formula() -> None:
    x = torch.rand(3, 3, 8, 8, generator=_gen(1))
    eps = torch.randn(x.shape, generator=_gen(2))
    c = additive_corruption(x, 0.5, noise=eps)
    assert_close(c.noisy, x + 0.5 * eps)
    assert_close(c.signal_scale, torch.ones(3))


@pytest.mark.parametrize("sigma", [0.22, 0.5, 2.0])
def test_scaled_preserves_unit_variance(sigma: float) -> None:
    """Unit-variance input stays unit variance; the simple kind grows it by sigma^2."""
    x = torch.randn(64, 3, 32, 32, generator=_gen(3))
    scaled = scaled_corruption(x, sigma, generator=_gen(4)).noisy
    simple = additive_corruption(x, sigma, generator=_gen(4)).noisy
    assert abs(scaled.var().item() - 1.0) < 0.02
    assert abs(simple.var().item() - (1.0 + sigma**2)) < 0.03 * (1 + sigma**2)


def test_noise_statistics_and_determinism() -> None:
    x = torch.zeros(32, 3, 32, 32)
    c1 = scaled_corruption(x, 0.22, generator=_gen(7))
    c2 = scaled_corruption(x, 0.22, generator=_gen(7))
    assert torch.equal(c1.noisy, c2.noisy)
    eps = c1.noise
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1.0) < 0.01
    # x = 0: the noisy input is exactly b * eps, std b = sigma / sqrt(1 + sigma^2)
    assert abs(c1.noisy.std().item() - 0.22 / math.sqrt(1.0484)) < 0.003
    c3 = scaled_corruption(x, 0.22, generator=_gen(8))
    assert not torch.equal(c1.noisy, c3.noisy)


def test_per_sample_sigma() -> None:
    x = torch.ones(2, 1, 4, 4)
    eps = torch.ones_like(x)
    c = scaled_corruption(x, torch.tensor([0.0, 1.0]), noise=eps)
    assert_close(c.noisy[0], x[0])
    assert_close(c.noisy[1], torch.full_like(x[1], 2 / math.sqrt(2)))


def test_diffusion_matches_q_sample_and_range() -> None:
    sched = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x = torch.rand(16, 3, 8, 8, generator=_gen(9)) * 2 - 1
    c = diffusion_corruption(sched, x, t_range=(0, 100), generator=_gen(10))
    assert c.t is not None and c.t.shape == (16,)
    assert int(c.t.min()) >= 0 and int(c.t.max()) < 100 and len(set(c.t.tolist())) > 1
    assert_close(c.noisy, q_sample(sched, x, c.t, c.noise))
    assert_close(c.gamma, sched.alphas_cumprod[c.t].float())
    again = corrupt(x, kind="diffusion", schedule=sched, t_range=(0, 100), generator=_gen(10))
    assert torch.equal(again.noisy, c.noisy) and torch.equal(again.t, c.t)


@pytest.mark.parametrize("kind", ["scaled", "simple", "diffusion"])
def test_estimate_clean_inverts(kind: str) -> None:
    sched = NoiseSchedule.from_name("linear", 1000)
    x = torch.rand(4, 3, 8, 8, generator=_gen(11)) * 2 - 1
    c = corrupt(x, kind=kind, sigma=0.3, schedule=sched, t_range=(0, 500), generator=_gen(12))
    assert_close(estimate_clean(c, c.noise), x, atol=1e-4, rtol=1e-4)


def test_bad_inputs() -> None:
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="noise shape"):
        scaled_corruption(x, 0.2, noise=torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="sigma"):
        scaled_corruption(x, -0.1, generator=_gen())
    with pytest.raises(ValueError, match="t_range"):
        diffusion_corruption(NoiseSchedule.from_name("linear", 10), x, t_range=(5, 20))
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corrupt(x, kind="salt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NoiseSchedule"):
        corrupt(x, kind="diffusion")
