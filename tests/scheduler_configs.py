"""Scheduler configs the runtime must reproduce, shared by the schedule/loop tests and the end-to-end tests.

Each entry overrides SVD's SchedulerConfig(). Every one is a config diffusers' EulerDiscreteScheduler
accepts and whose first timestep does not repeat at any step count up to 50 (so diffusers' loop
starts at sigma 0 and stays inside its sigmas); test_euler.py checks both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from svd_trt.families.svd.config import EULER_DEFAULTS, SchedulerConfig

# SVD's scheduler/scheduler_config.json as /work/shared/REFERENCE.md lists it (it has no
# final_sigmas_type or rescale_betas_zero_snr key); clip_sample: a key diffusers ignores.
SVD_SCHEDULER_JSON: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

SCHEDULER_CONFIGS: dict[str, dict[str, Any]] = {
    "svd": {},
    # a scheduler_config.json that sets nothing: epsilon, linear betas, plain sigmas, linspace, discrete
    "diffusers_defaults": dict(EULER_DEFAULTS),
    # Karras over the training sigmas' range (sigma_min/max null), discrete timesteps
    "epsilon_karras_discrete": {
        "prediction_type": "epsilon",
        "timestep_type": "discrete",
        "sigma_min": None,
        "sigma_max": None,
    },
    "epsilon_cosine_karras_discrete": {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "epsilon",
        "timestep_type": "discrete",
        "sigma_min": 0.05,
        "sigma_max": 20.0,
    },
    # plain (non-Karras) sigmas interpolated at the "leading" timesteps, continuous timesteps
    "v_plain_leading": {"use_karras_sigmas": False},
    # log_linear gives n + 1 plain sigmas, so continuous timesteps make n + 1 steps (as diffusers)
    "v_plain_log_linear_trailing": {
        "use_karras_sigmas": False,
        "interpolation_type": "log_linear",
        "timestep_spacing": "trailing",
    },
    "v_exponential_discrete": {
        "use_karras_sigmas": False,
        "use_exponential_sigmas": True,
        "timestep_type": "discrete",
        "sigma_min": None,
        "sigma_max": None,
    },
    "sample_plain_linspace_sigma_min": {
        "prediction_type": "sample",
        "use_karras_sigmas": False,
        "timestep_spacing": "linspace",
        "final_sigmas_type": "sigma_min",
    },
    "v_zero_snr_trailing_discrete": {
        "rescale_betas_zero_snr": True,
        "use_karras_sigmas": False,
        "timestep_spacing": "trailing",
        "timestep_type": "discrete",
    },
}


def scheduler_config(name: str) -> SchedulerConfig:
    """SVD's scheduler config with SCHEDULER_CONFIGS[name] applied."""
    return dataclasses.replace(SchedulerConfig(), **SCHEDULER_CONFIGS[name])
