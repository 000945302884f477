"""diffusion_core: the shared diffusion math of diffvision, as data plus pure functions.

A frozen :class:`NoiseSchedule` of float64 tables, and functions over tensors with per-sample timesteps ``t``
(LongTensor (B,)) and explicit ``t_prev`` (-1 = final). Randomness is explicit (``noise=`` / ``generator=``).

Example::

    from diffusion_core import NoiseSchedule, q_sample, to_x0_eps, ddim_step, sampling_pairs

    sched = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
    x_t = q_sample(sched, x0, t, noise=torch.randn_like(x0))            # training
    x = torch.randn(shape)
    for t, t_prev in sampling_pairs(1000, num_steps=50, spacing="trailing"):
        x0_hat, eps_hat = to_x0_eps(sched, x, t, model(x, t), "epsilon")
        x = ddim_step(sched, x, t, t_prev, x0_hat, eps_hat, eta=0.0).prev_sample
"""

from diffusion_core.dpm_solver import dpm_solver_2m_sample, dpm_solver_2m_step
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
    LoopState,
    StepOutput,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    sample_loop,
    sampling_pairs,
    sampling_timesteps,
)
from diffusion_core.schedule import BETA_SCHEDULES, NoiseSchedule

__all__ = [
    "BETA_SCHEDULES",
    "LoopState",
    "NoiseSchedule",
    "PREDICTION_TYPES",
    "PredictionType",
    "StepOutput",
    "X0Eps",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "dpm_solver_2m_sample",
    "dpm_solver_2m_step",
    "min_snr_weight",
    "per_sample_mse",
    "q_sample",
    "sample_loop",
    "sample_timesteps",
    "sampling_pairs",
    "sampling_timesteps",
    "snr",
    "to_x0_eps",
    "training_target",
]
