"""Euler sampling over Karras sigmas, as diffusers' EulerDiscreteScheduler computes it for SVD.

Pure functions on numpy arrays; the step index is the caller's loop variable. Dtypes follow
diffusers: float32 sigmas and timesteps, the step computed in float32 and cast back to the
model output's dtype. v-prediction preconditioning (EDM, sigma_data = 1):
    c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1),  c_in = 1 / sqrt(sigma^2 + 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from svd_trt.config import SchedulerConfig

RHO = 7.0  # Karras et al. (2022), eq. 5; diffusers hard-codes it
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
SPACINGS = ("linspace", "leading", "trailing")
F32 = np.float32
# IEEE sqrt; torch's CPU sqrt (MKL) is not correctly rounded and lands 1 ulp away for ~15% of
# float32 inputs, which bounds how close c_in / c_out get to diffusers'. Tests swap this out.
_sqrt = np.sqrt


@dataclass(frozen=True)
class Schedule:
    """sigmas [N+1] float32 ending in the final sigma; timesteps [N] float32 (the UNet's input)."""

    sigmas: np.ndarray
    timesteps: np.ndarray
    init_noise_sigma: np.float32


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = RHO) -> np.ndarray:
    """sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, float64 [n], as k-diffusion."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n) in float32: start + i*step up to n/2, end - (n-1-i)*step after.

    torch's x86 CPU build fuses each multiply-add (one rounding), emulated here in float64
    (exact for a float32 product); np.linspace rounds differently in about 1 value in 3.
    """
    start32, end32 = F32(start), F32(end)
    if n == 1:
        return np.array([start32])
    step = np.float64((end32 - start32) / F32(n - 1))
    i = np.arange(n)
    head = (np.float64(start32) + step * i).astype(F32)
    tail = (np.float64(end32) - step * (n - 1 - i)).astype(F32)
    return np.where(i < n // 2, head, tail)


def train_sigmas(cfg: SchedulerConfig) -> np.ndarray:
    """sqrt((1 - alpha_bar) / alpha_bar) of the training betas, float32 [T], ascending in t."""
    if cfg.beta_schedule == "linear":
        betas = linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
    elif cfg.beta_schedule == "scaled_linear":
        root = linspace_f32(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps)
        betas = root * root
    else:
        raise ValueError(
            f"beta_schedule {cfg.beta_schedule!r} is not supported: use 'linear' or 'scaled_linear'"
        )
    # torch's CPU cumprod accumulates float32 in double and rounds each output
    alphas_cumprod = np.cumprod((1.0 - betas).astype(np.float64)).astype(F32)
    return _sqrt((1 - alphas_cumprod) / alphas_cumprod)


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose log-sigma interpolates linearly to each sigma (diffusers' _sigma_to_t)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_train_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _check(cfg: SchedulerConfig, num_inference_steps: int) -> None:
    """Reject what diffusers rejects, and the non-Karras schedules this runtime does not implement."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if not cfg.use_karras_sigmas:
        raise ValueError(
            "only Karras sigmas are supported (use_karras_sigmas=True, as SVD's scheduler config)"
        )
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {cfg.prediction_type!r} is not supported: use one of {PREDICTION_TYPES}"
        )
    if cfg.timestep_spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing {cfg.timestep_spacing!r} is not supported: use one of {SPACINGS}")
    if cfg.interpolation_type not in ("linear", "log_linear"):
        raise ValueError(
            f"interpolation_type {cfg.interpolation_type!r} is not supported: use 'linear' or 'log_linear'"
        )
    if cfg.final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(
            f"final_sigmas_type {cfg.final_sigmas_type!r} is not supported: use 'zero' or 'sigma_min'"
        )


def make_schedule(cfg: SchedulerConfig, num_inference_steps: int) -> Schedule:
    """diffusers' set_timesteps(num_inference_steps) with Karras sigmas, and its init_noise_sigma."""
    _check(cfg, num_inference_steps)
    karras = karras_sigmas(cfg.sigma_min, cfg.sigma_max, num_inference_steps)
    continuous = cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction"
    need_train = not continuous or cfg.final_sigmas_type == "sigma_min"
    train = train_sigmas(cfg) if need_train else None
    last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.append(karras, last).astype(F32)
    if continuous:
        # EDM's c_noise = ln(sigma) / 4 of the float32 sigmas; float64's log rounded once
        # (torch's float32 log is not correctly rounded: it can differ by 1 ulp)
        timesteps = F32(0.25) * np.log(sigmas[:-1].astype(np.float64)).astype(F32)
    else:
        # diffusers interpolates the float64 Karras sigmas, before their float32 cast
        timesteps = sigma_to_t(karras, np.log(train)).astype(F32)
        if num_inference_steps > 1 and timesteps[0] == timesteps[1]:
            # diffusers would start at index 1 (index_for_timestep) and step past the last sigma
            raise ValueError(
                f"sigma_max {cfg.sigma_max} is beyond the training sigmas ({train[-1]:.4g}): "
                "discrete timesteps repeat; use timestep_type='continuous' with v_prediction"
            )
    return Schedule(sigmas, timesteps, init_noise_sigma(sigmas, cfg.timestep_spacing))


def init_noise_sigma(sigmas: np.ndarray, timestep_spacing: str) -> np.float32:
    """max(sigma) for 'linspace'/'trailing', else sqrt(max(sigma)^2 + 1) (diffusers' property), float32."""
    max_sigma = F32(sigmas.max())
    if timestep_spacing in ("linspace", "trailing"):
        return max_sigma
    return _sqrt(max_sigma * max_sigma + F32(1))


def _as_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return x.astype(dtype, copy=False)


def scale_model_input(x: np.ndarray, sigma: float) -> np.ndarray:
    """c_in * x = x / sqrt(sigma^2 + 1): float32 arithmetic, result in x's dtype (torch's opmath rule)."""
    sigma = F32(sigma)
    return _as_dtype(x / _sqrt(sigma * sigma + F32(1)), x.dtype)


def denoised(model_output: np.ndarray, sample: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """x0 estimate; v-prediction: model_output * c_out + sample * c_skip (sample already float32)."""
    sigma = F32(sigma)
    if prediction_type == "v_prediction":
        var = sigma * sigma + F32(1)
        # torch multiplies in model_output's dtype (float32 opmath, rounded back) before the float32 add
        out = _as_dtype(model_output * (-sigma / _sqrt(var)), model_output.dtype)
        return out + sample / var
    if prediction_type == "epsilon":
        return sample - _as_dtype(sigma * model_output, model_output.dtype)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r} is not supported: use one of {PREDICTION_TYPES}")


def step(
    model_output: np.ndarray,
    sample: np.ndarray,
    sigma: float,
    sigma_next: float,
    prediction_type: str = "v_prediction",
) -> np.ndarray:
    """One Euler step x' = x + (x - x0) / sigma * (sigma_next - sigma), in float32; s_churn = 0, so no noise.

    Returns model_output's dtype, as diffusers' scheduler.step(...).prev_sample.
    """
    sample = sample.astype(F32, copy=False)
    sigma, sigma_next = F32(sigma), F32(sigma_next)
    x0 = denoised(model_output, sample, sigma, prediction_type)
    derivative = (sample - x0) / sigma
    return _as_dtype(sample + derivative * (sigma_next - sigma), model_output.dtype)


def sample_euler(
    model: Callable[[np.ndarray, np.float32], np.ndarray],
    x: np.ndarray,
    schedule: Schedule,
    prediction_type: str = "v_prediction",
) -> np.ndarray:
    """Whole loop from already noised x (x = noise * init_noise_sigma); model(c_in * x, t) -> model output."""
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        x = step(model(scale_model_input(x, sigma), t), x, sigma, sigma_next, prediction_type)
    return x


def check_scheduler(cfg: SchedulerConfig) -> None:
    """Refuse, in one line, a scheduler config this runtime cannot sample like diffusers."""
    _check(cfg, 1)
