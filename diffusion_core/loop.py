"""The one sampling loop of diffvision: a driver over explicit (t, t_prev) pairs with a pluggable step.

Modelled on guided-diffusion's ``ddim_sample_loop_progressive`` (x0 hook ``denoised_fn`` / ``clip_denoised``) and
k-diffusion's uniform sampler signature (one driver, the algorithm is an argument, a callback after every step).
Every user goes through :func:`sample_loop`: DDIM (:func:`ddim`), DPM-Solver++(2M)
(``diffusion_core.dpm_solver.dpm_solver_2m``), detection's box sampler (renewal as a callback, the class logits as
the denoiser's auxiliary output) and image sampling.

One iteration, for a pair (t, t_prev) and state x (B, ...)::

    out = denoise_fn(x, t)                    # model_output, or (model_output, aux)
    x0, eps = to_x0_eps(schedule, x, t, model_output, prediction_type)
    x0 = x0_hook(x0); eps re-derived from x0  # optional (clip_sample / clip_denoised)
    step = step_fn(schedule, x, t, t_prev, X0Eps(x0, eps), last=previous LoopState, noise=draw)
    x = callback(LoopState(...)) or step.prev_sample
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from diffusion_core.process import PredictionType, X0Eps, to_x0_eps
from diffusion_core.sampling import StepOutput, ddim_step
from diffusion_core.schedule import NoiseSchedule

__all__ = [
    "Generators",
    "LoopState",
    "NoiseFn",
    "StepFn",
    "X0Hook",
    "clip_x0",
    "ddim",
    "randn",
    "sample_loop",
]

Generators = torch.Generator | Sequence[torch.Generator] | None
NoiseFn = Callable[[torch.Size, torch.device, torch.dtype], Tensor]
X0Hook = Callable[[Tensor], Tensor]


class LoopState(NamedTuple):
    """What a :func:`sample_loop` callback (and the next step) sees after step ``index`` (t -> t_prev).

    ``x_t`` is the state the step started from, ``x0`` / ``eps`` the (hooked) predictions, ``step`` the step's
    output and ``aux`` whatever the denoiser returned beside its model output (None if nothing).
    """

    index: int
    t: Tensor
    t_prev: Tensor
    x_t: Tensor
    x0: Tensor
    eps: Tensor
    step: StepOutput
    aux: Any = None


class StepFn(Protocol):
    """A reverse step: ``(schedule, x_t, t, t_prev, pred, *, last, noise) -> StepOutput``.

    ``pred`` holds the x0 / eps predictions at ``t``; ``last`` is the previous iteration's :class:`LoopState`
    (None at the first step; multistep solvers read ``last.x0`` and ``last.t``); ``noise()`` draws standard normal
    noise shaped like ``x_t`` (call it only when the step is stochastic, so deterministic steps use no randomness).
    """

    def __call__(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        t: Tensor,
        t_prev: Tensor,
        pred: X0Eps,
        *,
        last: LoopState | None,
        noise: Callable[[], Tensor],
    ) -> StepOutput: ...


def randn(
    shape: Sequence[int],
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...) on ``device``.

    ``generator``: None (the global RNG), one ``torch.Generator`` for the whole batch (drawn on the generator's
    device, then moved), or a sequence of B generators: row i comes from generator i alone, so an image's noise
    does not depend on the rest of the batch.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    return torch.stack(rows).to(device)


def ddim(eta: float = 0.0) -> StepFn:
    """The DDIM step (:func:`diffusion_core.ddim_step`) as a loop step; noise is drawn only when it is used
    (eta > 0 and some sample is not at its final step, where sigma = 0)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def step(
        schedule: NoiseSchedule,
        x_t: Tensor,
        t: Tensor,
        t_prev: Tensor,
        pred: X0Eps,
        *,
        last: LoopState | None,
        noise: Callable[[], Tensor],
    ) -> StepOutput:
        z = noise() if eta > 0 and bool((t_prev >= 0).any()) else None
        return ddim_step(
            schedule, x_t, t, t_prev, pred.x0, pred.eps, eta=eta if z is not None else 0.0, noise=z
        )

    return step


def clip_x0(limit: float = 1.0) -> X0Hook:
    """diffusers' ``clip_sample`` (``clip_sample_range=limit``) / guided-diffusion's ``clip_denoised``:
    clamp the x0 prediction to [-limit, limit]."""
    if limit <= 0:
        raise ValueError(f"clip limit must be > 0, got {limit}")
    return lambda x0: x0.clamp(-limit, limit)


def _split(out: Tensor | tuple[Tensor, Any]) -> tuple[Tensor, Any]:
    if isinstance(out, Tensor):
        return out, None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor):
        return out
    raise TypeError(f"denoise_fn must return a Tensor or (Tensor, aux), got {type(out).__name__}")


def sample_loop(
    denoise_fn: Callable[[Tensor, Tensor], Tensor | tuple[Tensor, Any]],
    schedule: NoiseSchedule,
    x_T: Tensor,
    pairs: Sequence[tuple[int, int]],
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callable[[LoopState], Tensor | None] | None = None,
    prediction_type: PredictionType = "epsilon",
    *,
    step_fn: StepFn | None = None,
    x0_hook: X0Hook | None = None,
    use_clipped_model_output: bool = True,
    noise_fn: NoiseFn | None = None,
) -> StepOutput:
    """Run a sampler over explicit (t, t_prev) pairs (from :func:`diffusion_core.sampling_pairs`).

    Args:
        denoise_fn: ``denoise_fn(x_t, t) -> model_output`` or ``(model_output, aux)``, with t a LongTensor (B,)
            and model_output shaped like x_t, read as ``prediction_type``. ``aux`` (e.g. detection's class logits)
            reaches the callback as ``LoopState.aux``.
        schedule: the noise schedule.
        x_T: (B, ...) initial noise.
        pairs: decreasing (t, t_prev) pairs; the last usually ends at t_prev = -1.
        eta: DDIM eta when ``step_fn`` is None (the default step is ``ddim(eta)``).
        generator: source of the step noise (see :func:`randn`: one generator, or one per sample).
        callback: called after every step; a returned tensor replaces the state the next step starts from.
        step_fn: the step algorithm (:func:`ddim`, ``dpm_solver_2m``); give either this or ``eta``.
        x0_hook: applied to the x0 prediction before the step (e.g. :func:`clip_x0`).
        use_clipped_model_output: with ``x0_hook``, re-derive eps from the hooked x0 (guided-diffusion's
            ``clip_denoised``; diffusers' ``use_clipped_model_output=True``). False keeps the model's eps.
        noise_fn: ``noise_fn(shape, device, dtype)`` replacing ``generator`` as the noise source.

    Returns:
        The last StepOutput (``prev_sample`` is the final sample, or the callback's replacement).
    """
    if not pairs:
        raise ValueError("pairs must contain at least one (t, t_prev) step")
    if step_fn is not None and eta != 0.0:
        raise ValueError("give either eta (DDIM) or step_fn, not both")
    if noise_fn is not None and generator is not None:
        raise ValueError("give either generator or noise_fn, not both")
    step_fn = step_fn or ddim(eta)
    x, B = x_T, x_T.shape[0]
    out = StepOutput(prev_sample=x_T, pred_original_sample=x_T)
    last: LoopState | None = None
    for i, (t_int, t_prev_int) in enumerate(pairs):
        t = torch.full((B,), t_int, dtype=torch.long, device=x.device)
        t_prev = torch.full((B,), t_prev_int, dtype=torch.long, device=x.device)
        model_output, aux = _split(denoise_fn(x, t))
        x0, eps = to_x0_eps(schedule, x, t, model_output, prediction_type)
        if x0_hook is not None:
            x0 = x0_hook(x0)
            if use_clipped_model_output:
                eps = to_x0_eps(schedule, x, t, x0, "sample").eps

        def draw(like: Tensor = x) -> Tensor:
            if noise_fn is not None:
                z = noise_fn(like.shape, like.device, like.dtype)
                if z.shape != like.shape:
                    raise ValueError(
                        f"noise_fn returned shape {tuple(z.shape)}, expected {tuple(like.shape)}"
                    )
                return z
            return randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

        out = step_fn(schedule, x, t, t_prev, X0Eps(x0, eps), last=last, noise=draw)
        last = LoopState(i, t, t_prev, x, x0, eps, out, aux)
        x = out.prev_sample
        if callback is not None:
            replaced = callback(last)
            if replaced is not None:
                if replaced.shape != x.shape:
                    raise ValueError(
                        f"callback returned shape {tuple(replaced.shape)}, expected {tuple(x.shape)}"
                    )
                x = replaced
                out = StepOutput(prev_sample=x, pred_original_sample=out.pred_original_sample)
    return out
