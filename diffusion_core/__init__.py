"""diffusion_core: the shared diffusion math of diffvision, as data plus pure functions.

A frozen :class:`NoiseSchedule` of float64 tables, and functions over tensors with per-sample timesteps ``t``
(LongTensor (B,)) and explicit ``t_prev`` (-1 = final). Randomness is explicit (``noise=`` / ``generator=``).

Example::

    from diffusion_core import NoiseSchedule, q_sample, sample_loop, sampling_pairs, clip_x0, dpm_solver_2m

    sched = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x_t = q_sample(sched, x0, t, noise=torch.randn_like(x0))            # training
    pairs = sampling_pairs(1000, num_steps=50, spacing="trailing")
    x = sample_loop(model, sched, torch.randn(shape), pairs, eta=0.0, x0_hook=clip_x0(1.0)).prev_sample
    x = sample_loop(model, sched, torch.randn(shape), pairs, step_fn=dpm_solver_2m).prev_sample  # DPM-Solver++

``sample_loop`` is the only sampling loop: tasks plug in through its step function, x0 hook, noise source and
callback (which sees the denoiser's auxiliary outputs and may replace the state, e.g. detection's box renewal).
"""

from diffusion_core.corruption import (
    CORRUPTION_KINDS,
    Corruption,
    CorruptionKind,
    additive_corruption,
    corrupt,
    diffusion_corruption,
    estimate_clean,
    scaled_corruption,
    sigma_to_gamma,
)
from diffusion_core.dpm_solver import dpm_solver_2m, dpm_solver_2m_sample, dpm_solver_2m_step
from diffusion_core.loop import (
    Generators,
    LoopState,
    NoiseFn,
    StepFn,
    X0Hook,
    clip_x0,
    ddim,
    randn,
    sample_loop,
)
from diffusion_core.losses import min_snr_weight, per_sample_mse, sample_timesteps, snr
from diffusion_core.process import (
    PREDICTION_TYPES,
    PredictionType,
    X0Eps,
    q_sample,
    to_x0_eps,
    training_target,
)
from diffusion_core.sampling import (
    StepOutput,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    sampling_pairs,
    sampling_timesteps,
)
from diffusion_core.schedule import BETA_SCHEDULES, NoiseSchedule

__all__ = [
    "BETA_SCHEDULES",
    "CORRUPTION_KINDS",
    "Corruption",
    "CorruptionKind",
    "additive_corruption",
    "corrupt",
    "diffusion_corruption",
    "estimate_clean",
    "scaled_corruption",
    "sigma_to_gamma",
    "Generators",
    "LoopState",
    "NoiseFn",
    "NoiseSchedule",
    "PREDICTION_TYPES",
    "PredictionType",
    "StepFn",
    "StepOutput",
    "X0Eps",
    "X0Hook",
    "classifier_free_guidance",
    "clip_x0",
    "ddim",
    "ddim_step",
    "ddpm_step",
    "dpm_solver_2m",
    "dpm_solver_2m_sample",
    "dpm_solver_2m_step",
    "min_snr_weight",
    "per_sample_mse",
    "q_sample",
    "randn",
    "sample_loop",
    "sample_timesteps",
    "sampling_pairs",
    "sampling_timesteps",
    "snr",
    "to_x0_eps",
    "training_target",
]
