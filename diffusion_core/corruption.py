"""Image corruptions for denoising pretraining (DeP / DDeP, Brempong et al. 2022): pure functions.

Every corruption has the form ``x_noisy = a * x + b * eps`` with eps ~ N(0, I) and per-sample scales
``a`` (signal) and ``b`` (noise), returned together as a :class:`Corruption` so that a caller can regress
eps (the DDeP target) and recover the clean estimate with :func:`estimate_clean`.

* ``"scaled"`` (DDeP's best, default sigma 0.22): ``(x + sigma * eps) / sqrt(1 + sigma^2)``, i.e. a
  variance-preserving one-step diffusion with gamma = 1 / (1 + sigma^2): a = sqrt(gamma), b = sqrt(1 - gamma).
* ``"simple"``: ``x + sigma * eps`` (a = 1, b = sigma).
* ``"diffusion"``: noise levels of a :class:`~diffusion_core.NoiseSchedule`, a timestep t drawn per image
  (uniform over ``t_range``), gamma = alpha_bar_t, ``x_noisy = sqrt(gamma) x + sqrt(1 - gamma) eps`` (DDPM eq. 4).

Shapes: ``x`` is (B, ...) (images (B, C, H, W)); per-sample quantities are (B,). Randomness is explicit: pass
``noise=`` (shaped like x) or a ``generator=``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from diffusion_core.process import as_timesteps, q_sample
from diffusion_core.schedule import NoiseSchedule

__all__ = [
    "CORRUPTION_KINDS",
    "Corruption",
    "CorruptionKind",
    "additive_corruption",
    "corrupt",
    "diffusion_corruption",
    "estimate_clean",
    "scaled_corruption",
    "sigma_to_gamma",
]

CorruptionKind = Literal["scaled", "simple", "diffusion"]
CORRUPTION_KINDS: tuple[str, ...] = ("scaled", "simple", "diffusion")


class Corruption(NamedTuple):
    """A corrupted batch ``noisy = signal_scale * x + noise_scale * noise`` (scales broadcast per sample).

    Attributes:
        noisy: (B, ...) the corrupted input, dtype of x.
        noise: (B, ...) the standard-normal eps that was used (the eps-prediction target).
        signal_scale: (B,) float32, a.
        noise_scale: (B,) float32, b.
        t: (B,) LongTensor of diffusion timesteps for ``"diffusion"``, else None.
    """

    noisy: Tensor
    noise: Tensor
    signal_scale: Tensor
    noise_scale: Tensor
    t: Tensor | None = None

    @property
    def gamma(self) -> Tensor:
        """(B,) signal fraction a^2 / (a^2 + b^2) (= alpha_bar for the variance-preserving kinds)."""
        a2, b2 = self.signal_scale.square(), self.noise_scale.square()
        return a2 / (a2 + b2)


def sigma_to_gamma(sigma: float) -> float:
    """gamma = 1 / (1 + sigma^2): the alpha_bar that the scaled corruption with ``sigma`` equals."""
    return 1.0 / (1.0 + sigma * sigma)


def _noise_like(x: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is not None:
        if noise.shape != x.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} does not match x shape {tuple(x.shape)}"
            )
        return noise.to(dtype=x.dtype, device=x.device)
    gen_device = generator.device if generator is not None else x.device
    eps = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return eps.to(device=x.device, dtype=x.dtype)


def _per_sample(value: float | Tensor, batch: int, device: torch.device, name: str) -> Tensor:
    """A float or (B,) tensor as a float32 (B,) tensor; values must be finite and >= 0."""
    v = torch.as_tensor(value, dtype=torch.float32, device=device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{name} must be a number or shape ({batch},), got {tuple(v.shape)}")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {v.tolist()}")
    return v


def _broadcast(scale: Tensor, like: Tensor) -> Tensor:
    return scale.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _apply(x: Tensor, eps: Tensor, a: Tensor, b: Tensor, t: Tensor | None = None) -> Corruption:
    noisy = _broadcast(a, x) * x + _broadcast(b, x) * eps
    return Corruption(noisy=noisy, noise=eps, signal_scale=a, noise_scale=b, t=t)


def scaled_corruption(
    x: Tensor,
    sigma: float | Tensor = 0.22,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Corruption:
    """DDeP's "scaled" additive noise: ``(x + sigma * eps) / sqrt(1 + sigma^2)`` (variance preserving).

    Args:
        x: (B, ...) clean images (any range; DDeP uses [-1, 1]).
        sigma: noise std before rescaling, a number or per-sample (B,) tensor.
        noise: eps shaped like x (drawn from ``generator`` when None).
        generator: torch.Generator for eps.
    """
    s = _per_sample(sigma, x.shape[0], x.device, "sigma")
    inv = torch.rsqrt(1.0 + s.square())
    return _apply(x, _noise_like(x, noise, generator), inv, s * inv)


def additive_corruption(
    x: Tensor,
    sigma: float | Tensor = 0.22,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Corruption:
    """DDeP's "simple" additive noise: ``x + sigma * eps`` (the variance grows by sigma^2)."""
    s = _per_sample(sigma, x.shape[0], x.device, "sigma")
    return _apply(x, _noise_like(x, noise, generator), torch.ones_like(s), s)


def diffusion_corruption(
    schedule: NoiseSchedule,
    x: Tensor,
    *,
    t: Tensor | int | None = None,
    t_range: tuple[int, int] | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Corruption:
    """Diffusion noise levels: t per image (given, or uniform in ``[t_range[0], t_range[1])``), gamma = alpha_bar_t.

    DDeP found a restricted range of low noise levels best when the level is sampled (the full [0, T) range is
    the DDPM reference). ``t`` and ``noise`` both come from ``generator`` when not given (t first).

    Returns:
        a :class:`Corruption` with ``t`` set; ``noisy`` equals ``q_sample(schedule, x, t, noise)``.
    """
    batch, T = x.shape[0], schedule.num_timesteps
    if t is None:
        lo, hi = t_range if t_range is not None else (0, T)
        if not 0 <= lo < hi <= T:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= T={T}, got {t_range}")
        gen_device = generator.device if generator is not None else x.device
        t = torch.randint(lo, hi, (batch,), generator=generator, device=gen_device)
    t = as_timesteps(t, batch, T, device=x.device)
    eps = _noise_like(x, noise, generator)
    abar = schedule.alphas_cumprod.to(x.device)[t]
    a, b = abar.sqrt().float(), (1.0 - abar).sqrt().float()
    return Corruption(
        noisy=q_sample(schedule, x, t, eps), noise=eps, signal_scale=a, noise_scale=b, t=t
    )


def corrupt(
    x: Tensor,
    *,
    kind: CorruptionKind = "scaled",
    sigma: float | Tensor = 0.22,
    schedule: NoiseSchedule | None = None,
    t_range: tuple[int, int] | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Corruption:
    """Dispatch on ``kind`` (``"scaled"`` | ``"simple"`` use ``sigma``; ``"diffusion"`` needs ``schedule``)."""
    if kind == "scaled":
        return scaled_corruption(x, sigma, noise=noise, generator=generator)
    if kind == "simple":
        return additive_corruption(x, sigma, noise=noise, generator=generator)
    if kind == "diffusion":
        if schedule is None:
            raise ValueError("kind='diffusion' needs a NoiseSchedule (schedule=...)")
        return diffusion_corruption(schedule, x, t_range=t_range, noise=noise, generator=generator)
    raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")


def estimate_clean(corruption: Corruption, eps_pred: Tensor) -> Tensor:
    """Clean-image estimate from a predicted eps: ``(noisy - b * eps_pred) / a`` (exact when eps_pred = eps)."""
    noisy = corruption.noisy
    if eps_pred.shape != noisy.shape:
        raise ValueError(
            f"eps_pred shape {tuple(eps_pred.shape)} does not match {tuple(noisy.shape)}"
        )
    a = _broadcast(corruption.signal_scale, noisy)
    b = _broadcast(corruption.noise_scale, noisy)
    if (corruption.signal_scale <= 0).any():
        raise ValueError(
            "estimate_clean: a signal scale is 0 (pure noise); the clean image is not recoverable"
        )
    return (noisy - b * eps_pred.to(noisy.dtype)) / a
