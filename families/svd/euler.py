"""Euler sampling as diffusers' EulerDiscreteScheduler computes it, for every config it accepts for SVD.

Pure functions on numpy arrays (k-diffusion style): `make_schedule` is `set_timesteps(n)`,
`sample_euler` the pipeline's loop (scale_model_input, model, step). Preconditioning, sigma_data = 1:
    c_in = 1 / sqrt(sigma^2 + 1)                                      (every prediction type)
    x0 = x / (sigma^2 + 1) - F sigma / sqrt(sigma^2 + 1)              (v_prediction)
    x0 = x - sigma F (epsilon),   x0 = F (sample)
    Euler: x' = x + (x - x0) / sigma * (sigma_next - sigma)           (s_churn = 0: no noise)
Dtypes follow diffusers: float32 sigmas and timesteps; each step in float32, cast back to the model
output's dtype. Where diffusers goes through torch's float32 sqrt, exp and log (MKL on CPU, not
correctly rounded: 1 ulp off for some inputs) ours are correctly rounded; tests swap `_sqrt`, `_exp`
and `_log` for torch's to show every other operation is bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np

from svd_trt.errors import UserError
from svd_trt.families.svd.config import SchedulerConfig
from svd_trt.runtime.torch_math import linspace_f32

RHO = 7.0  # Karras et al. (2022), eq. 5; diffusers hard-codes it
# "original_sample" is diffusers' older name for "sample"; its step still accepts it
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample", "original_sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
INTERPOLATIONS = ("linear", "log_linear")
TIMESTEP_TYPES = ("discrete", "continuous")
FINAL_SIGMAS = ("zero", "sigma_min")
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
ZERO_SNR_ALPHA_BAR = 2.0**-24  # diffusers' last alpha_bar under rescale_betas_zero_snr (sigma ~ 4096)
F32 = np.float32


_sqrt = np.sqrt  # float32 in, correctly rounded


def _exp(x):
    return np.exp(np.asarray(x, np.float64)).astype(F32)


def _log(x):
    return np.log(np.asarray(x, np.float64)).astype(F32)


class SchedulerError(UserError, ValueError):
    """A scheduler config (or step count) this runtime does not reproduce: one line naming the field."""


@dataclass(frozen=True)
class Schedule:
    """Step i runs the model at timesteps[i] and moves sigmas[i] -> sigmas[i + 1], float32.

    sigmas are diffusers' scheduler.sigmas from the index its first step starts at (0 unless
    timesteps[0] repeats); there are len(timesteps) steps, usually num_inference_steps.
    """

    sigmas: np.ndarray
    timesteps: np.ndarray
    init_noise_sigma: np.float32


# ---------------------------------------------------------------- config check


def _refuse(cfg: SchedulerConfig, field: str, why: str) -> SchedulerError:
    return SchedulerError(f"scheduler {field}={getattr(cfg, field)!r} is not supported: {why}")


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def check_scheduler(cfg: SchedulerConfig) -> None:
    """Raise a one-line SchedulerError naming the first field diffusers refuses or this runtime does not reproduce.

    Needs no step count: engine builds and engine directories call it before any compute.
    """
    _check_choices(cfg)
    _check_numbers(cfg)
    if cfg.trained_betas is not None:  # diffusers ignores beta_schedule then
        _check_trained_betas(cfg)
    elif cfg.beta_schedule not in BETA_SCHEDULES:
        raise _refuse(cfg, "beta_schedule", f"use one of {', '.join(BETA_SCHEDULES)}, or trained_betas")


def _check_choices(cfg: SchedulerConfig) -> None:
    for field, allowed in (
        ("prediction_type", PREDICTION_TYPES),
        ("timestep_spacing", SPACINGS),
        ("interpolation_type", INTERPOLATIONS),
        ("timestep_type", TIMESTEP_TYPES),  # diffusers reads an unknown one as discrete: refused here
        ("final_sigmas_type", FINAL_SIGMAS),
    ):
        if getattr(cfg, field) not in allowed:
            raise _refuse(cfg, field, f"use one of {', '.join(allowed)}")
    for field in SIGMA_FLAGS:
        if not isinstance(getattr(cfg, field), bool):  # diffusers fails on null too (sum of the flags)
            raise _refuse(cfg, field, "use true or false")
    if cfg.rescale_betas_zero_snr not in (True, False, None):  # diffusers reads null as false
        raise _refuse(cfg, "rescale_betas_zero_snr", "use true or false")
    if cfg.use_beta_sigmas:
        raise _refuse(cfg, "use_beta_sigmas", "beta sigmas need scipy.stats, not a runtime dependency")
    if cfg.use_karras_sigmas and cfg.use_exponential_sigmas:
        raise _refuse(cfg, "use_exponential_sigmas", "use_karras_sigmas is true too (diffusers allows one)")


def _check_numbers(cfg: SchedulerConfig) -> None:
    """Ranges outside which diffusers' schedule has a zero, infinite or NaN sigma (or crashes)."""
    if isinstance(cfg.num_train_timesteps, bool) or not isinstance(cfg.num_train_timesteps, int):
        raise _refuse(cfg, "num_train_timesteps", "use an integer")
    if cfg.num_train_timesteps < 2:
        raise _refuse(cfg, "num_train_timesteps", "use at least 2")
    if not _is_number(cfg.steps_offset):
        raise _refuse(cfg, "steps_offset", "use a number")
    for field in ("sigma_min", "sigma_max"):
        v = getattr(cfg, field)
        if v is not None and not (_is_number(v) and v > 0):
            raise _refuse(cfg, field, "use a positive number or null")
    if cfg.trained_betas is None and cfg.beta_schedule in ("linear", "scaled_linear"):
        for field in ("beta_start", "beta_end"):
            v = getattr(cfg, field)
            if not (_is_number(v) and 0 < v < 1):
                raise _refuse(cfg, field, "use a number in (0, 1)")


def _check_trained_betas(cfg: SchedulerConfig) -> None:
    betas = cfg.trained_betas
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) < 2:
        raise SchedulerError("scheduler trained_betas is not supported: use a list of at least 2 numbers")
    bad = next((b for b in betas if not (_is_number(b) and 0 < b < 1)), None)
    if bad is not None:
        raise SchedulerError(f"scheduler trained_betas holds {bad!r}: every beta must be a number in (0, 1)")


# ---------------------------------------------------------------- training noise levels


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Glide's cosine schedule (diffusers' betas_for_alpha_bar), in Python floats as diffusers, then float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], F32)


def _cumprod(x: np.ndarray) -> np.ndarray:
    # torch's CPU cumprod accumulates float32 in double and rounds each output
    return np.cumprod(x.astype(np.float64)).astype(F32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2023), Algorithm 1: shift and scale sqrt(alpha_bar) so its last value is 0; float32 as diffusers."""
    root = _sqrt(_cumprod(1 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root * root
    return 1 - np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])


def betas(cfg: SchedulerConfig) -> np.ndarray:
    """The training betas, float32 [T] (trained_betas, when given, win over beta_schedule)."""
    if cfg.trained_betas is not None:
        b = np.asarray(cfg.trained_betas, np.float64).astype(F32)
    elif cfg.beta_schedule == "linear":
        b = linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
    elif cfg.beta_schedule == "scaled_linear":
        root = linspace_f32(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps)
        b = root * root
    else:
        b = _cosine_betas(cfg.num_train_timesteps)
    return _rescale_zero_terminal_snr(b) if cfg.rescale_betas_zero_snr else b


def train_sigmas(cfg: SchedulerConfig) -> np.ndarray:
    """sqrt((1 - alpha_bar) / alpha_bar) of the training betas, float32 [T], ascending in t."""
    alphas_cumprod = _cumprod(1 - betas(cfg))
    if cfg.rescale_betas_zero_snr:
        alphas_cumprod[-1] = ZERO_SNR_ALPHA_BAR  # diffusers: close to 0 so the first sigma is finite
    return _sqrt((1 - alphas_cumprod) / alphas_cumprod)


# ---------------------------------------------------------------- inference schedule


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = RHO) -> np.ndarray:
    """sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, float64 [n], as k-diffusion."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Evenly spaced in log sigma from sigma_max to sigma_min, float64 [n], as k-diffusion."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def spaced_timesteps(cfg: SchedulerConfig, n: int) -> np.ndarray:
    """diffusers' timestep_spacing (Lin et al. 2023, table 2), descending, float32."""
    T = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=F32)[::-1].copy()
    if cfg.timestep_spacing == "leading":
        t = (np.arange(0, n) * (T // n)).round()[::-1].astype(F32)
        return t + F32(cfg.steps_offset)  # diffusers adds in place: the float32 array stays float32
    # trailing; a float arange, so its length can differ from n, as diffusers'
    return np.arange(T, 0, -T / n).round().astype(F32) - F32(1)


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose log-sigma interpolates linearly to each sigma (diffusers' _sigma_to_t)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_train_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _inference_sigmas(cfg: SchedulerConfig, n: int, train: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """set_timesteps' sigmas before the final one: float64 or float32, as diffusers has them."""
    if cfg.interpolation_type == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    else:  # log_linear: n + 1 values from the largest training sigma to the smallest
        log_max, log_min = np.log(train[-1]), np.log(train[0])  # numpy's float32 log, as diffusers
        sigmas = _exp(linspace_f32(log_max, log_min, n + 1))
    if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
        # the config's range, else that of the sigmas just computed (which depend on the spacing)
        lo = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1].item()
        hi = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0].item()
        convert = karras_sigmas if cfg.use_karras_sigmas else exponential_sigmas
        sigmas = convert(lo, hi, n)
    return sigmas


def make_schedule(cfg: SchedulerConfig, num_inference_steps: int) -> Schedule:
    """diffusers' set_timesteps(num_inference_steps), where its first step starts, and init_noise_sigma."""
    check_scheduler(cfg)
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SchedulerError(f"num_inference_steps must be an integer of at least 1, got {n!r}")
    n = int(n)
    train = train_sigmas(cfg)
    timesteps = spaced_timesteps(cfg, n)
    sigmas = _inference_sigmas(cfg, n, train, timesteps)
    if cfg.use_karras_sigmas or cfg.use_exponential_sigmas:
        # diffusers interpolates the float64 sigmas, before their float32 cast
        timesteps = sigma_to_t(sigmas, np.log(train))
    last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.append(sigmas, last).astype(F32)
    if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
        # EDM's c_noise = ln(sigma) / 4 (diffusers falls back to discrete ones for other predictions)
        timesteps = F32(0.25) * _log(sigmas[:-1])
    timesteps = timesteps.astype(F32)
    start = _first_index(cfg, n, timesteps, len(sigmas), train)
    return Schedule(sigmas[start:], timesteps, init_noise_sigma(sigmas, cfg.timestep_spacing))


def _first_index(
    cfg: SchedulerConfig, n: int, timesteps: np.ndarray, num_sigmas: int, train: np.ndarray
) -> int:
    """diffusers' index_for_timestep(timesteps[0]): the second match when that timestep repeats."""
    hits = np.flatnonzero(timesteps == timesteps[0])
    start = int(hits[1]) if len(hits) > 1 else 0
    if start + len(timesteps) < num_sigmas:
        return start
    converted = cfg.use_karras_sigmas or cfg.use_exponential_sigmas
    if converted and cfg.sigma_max is not None and cfg.sigma_max > train[-1]:
        raise _refuse(
            cfg,
            "sigma_max",
            f"beyond the training sigmas ({train[-1]:.4g}) the discrete timesteps repeat and diffusers "
            "steps past its last sigma; use timestep_type='continuous' with v_prediction",
        )
    raise SchedulerError(
        f"num_inference_steps={n} is not supported with this scheduler: its first timestep "
        f"{timesteps[0]:g} repeats and diffusers would step past its last sigma"
    )


def init_noise_sigma(sigmas: np.ndarray, timestep_spacing: str) -> np.float32:
    """max(sigma) for 'linspace'/'trailing', else sqrt(max(sigma)^2 + 1) (diffusers' property), float32."""
    max_sigma = F32(sigmas.max())
    if timestep_spacing in ("linspace", "trailing"):
        return max_sigma
    return _sqrt(max_sigma * max_sigma + F32(1))


# ---------------------------------------------------------------- sampling


def _as_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return x.astype(dtype, copy=False)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(F32, copy=False)


def scale_model_input(x: np.ndarray, sigma: float) -> np.ndarray:
    """c_in * x = x / sqrt(sigma^2 + 1): float32 arithmetic, result in x's dtype (torch's opmath rule)."""
    sigma = F32(sigma)
    # Explicit float32: numpy < 2 (the serve extra pins it) would divide a float16 array by a
    # float32 scalar in float16; numpy 2 (NEP 50) and torch compute in float32.
    return _as_dtype(_f32(x) / _sqrt(sigma * sigma + F32(1)), x.dtype)


def denoised(model_output: np.ndarray, sample: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """x0 estimate; v-prediction: model_output * c_out + sample * c_skip (sample already float32)."""
    sigma = F32(sigma)
    if prediction_type == "v_prediction":
        var = sigma * sigma + F32(1)
        # torch multiplies in model_output's dtype (float32 opmath, rounded back) before the float32 add
        out = _as_dtype(_f32(model_output) * (-sigma / _sqrt(var)), model_output.dtype)
        return out + sample / var
    if prediction_type == "epsilon":
        # diffusers' `sigma * model_output`: torch's CPU mul casts a 0-d FIRST operand to the other's
        # dtype (fp16 here) before multiplying; as the second operand it would stay float32
        return sample - _as_dtype(sigma.astype(model_output.dtype) * model_output, model_output.dtype)
    if prediction_type in ("sample", "original_sample"):
        return model_output
    raise SchedulerError(
        f"prediction_type {prediction_type!r} is not supported: use one of {PREDICTION_TYPES}"
    )


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
    noise: np.ndarray,
    schedule: Schedule,
    prediction_type: str,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The whole loop from unit noise [B, F, C, h, w]; returns the final latents, the model output's dtype.

    noise is scaled by init_noise_sigma here (diffusers' prepare_latents, in noise's dtype).
    model(c_in * x, t) -> the model output for x: the caller appends the image latents and runs CFG.
    on_step(i, n) after step i (1-based) of n.
    """
    x = _as_dtype(_f32(noise) * schedule.init_noise_sigma, noise.dtype)
    n = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        x = step(model(scale_model_input(x, sigma), t), x, sigma, sigma_next, prediction_type)
        if on_step:
            on_step(i + 1, n)
    return x
