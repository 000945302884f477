"""Noise schedules: a frozen dataclass of float64 tables plus the beta-schedule constructors.

Names follow diffusers (`"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`, `"sigmoid"`) so configs and parity
tests line up with the most widely used implementation. Note that `"linear"` is *not* rescaled by `1000 / T`
(diffusers' convention; OpenAI and lucidrains rescale): the two agree only at T = 1000.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "BETA_SCHEDULES"]


def _linear(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def _scaled_linear(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    # Latent-diffusion schedule: linear in sqrt(beta).
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def _cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), as DiffusionDet uses it.

    beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta) with abar(u) = cos((u + s) / (1 + s) * pi / 2)^2.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def _sigmoid(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    # GeoDiff's sigmoid schedule, as diffusers' DDPMScheduler defines it.
    x = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": _linear,
    "scaled_linear": _scaled_linear,
    "squaredcos_cap_v2": _cosine,
    "sigmoid": _sigmoid,
}


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Discrete-time variance-preserving noise schedule.

    Attributes:
        betas: (T,) float64, beta_t for t = 0..T-1.
        alphas_cumprod: (T,) float64, alpha_bar_t = prod_{s<=t} (1 - beta_s), monotone decreasing in (0, 1].

    Derived tables (``alphas``, ``sqrt_alphas_cumprod``, ...) are computed on demand. Functions in
    ``diffusion_core`` cast the tables to the input's dtype and device at the point of use.
    """

    betas: Tensor
    alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        if self.betas.ndim != 1 or self.alphas_cumprod.shape != self.betas.shape:
            raise ValueError(
                f"betas and alphas_cumprod must be 1-D of equal length, got {tuple(self.betas.shape)} "
                f"and {tuple(self.alphas_cumprod.shape)}"
            )
        if self.betas.dtype != torch.float64 or self.alphas_cumprod.dtype != torch.float64:
            raise ValueError(
                "NoiseSchedule tables must be float64; build it with from_name/from_betas"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas: Tensor | list[float]) -> NoiseSchedule:
        """Build a schedule from explicit betas, each in (0, 1]."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas <= 1))][0].item()
            raise ValueError(f"every beta must be in (0, 1]; found {bad}")
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_name(cls, name: str, num_timesteps: int = 1000, **kwargs: float) -> NoiseSchedule:
        """Build a named schedule.

        Args:
            name: one of ``"linear"`` (beta_start=1e-4, beta_end=0.02), ``"scaled_linear"`` (1e-4, 0.02; Stable Diffusion uses 0.00085, 0.012),
                ``"squaredcos_cap_v2"`` (cosine; s=0.008, max_beta=0.999), ``"sigmoid"`` (1e-4, 0.02).
            num_timesteps: T, the number of training timesteps.
            **kwargs: the schedule's own parameters (beta_start, beta_end, s, max_beta).
        """
        if name not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown noise schedule {name!r}; expected one of {sorted(BETA_SCHEDULES)}"
            )
        if int(num_timesteps) != num_timesteps or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
        try:
            betas = BETA_SCHEDULES[name](int(num_timesteps), **kwargs)
        except TypeError as err:
            raise ValueError(
                f"bad parameters {sorted(kwargs)} for schedule {name!r}: {err}"
            ) from None
        return cls.from_betas(betas)

    # ------------------------------------------------------------------ properties
    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """alpha_bar_{t-1}, with alpha_bar_{-1} = 1."""
        return torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def sqrt_alphas_cumprod(self) -> Tensor:
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> Tensor:
        return (1.0 - self.alphas_cumprod).sqrt()

    @property
    def posterior_variance(self) -> Tensor:
        """beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t  (DDPM eq. 7)."""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Return a copy with the tables on ``device`` (still float64)."""
        return NoiseSchedule(
            betas=self.betas.to(device), alphas_cumprod=self.alphas_cumprod.to(device)
        )

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.num_timesteps}, beta=[{self.betas[0].item():.3g}, "
            f"{self.betas[-1].item():.3g}], alpha_bar_T-1={self.alphas_cumprod[-1].item():.3g})"
        )
