"""The flow-matching Euler schedule of LTX-Video, as LTXPipeline drives FlowMatchEulerDiscreteScheduler.

The pipeline passes sigmas = linspace(1, 1/N, N) and mu = calculate_shift(F' * H' * W'); set_timesteps
then shifts them (dynamic: exponential or linear time shift by mu; else a fixed `shift`), stretches
them so the last one is shift_terminal, optionally converts them (Karras, exponential), appends 0
(1 with invert_sigmas) and sets timesteps = 1000 * sigma. A step is x + (sigma_next - sigma) * v.

Every array operation is float32 with the operand dtypes numpy 2 (NEP 50) gives diffusers, written
with explicit float32 scalars so numpy 1.x's value-based promotion computes the same bits.
Pure functions: no step counter; the caller walks sigmas[i] -> sigmas[i + 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from svd_trt.errors import UserError
from svd_trt.families.ltx.config import FlowMatchSchedulerConfig

F32 = np.float32
TIME_SHIFT_TYPES = ("exponential", "linear")
FLAGS = (
    "use_dynamic_shifting",
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)
RHO = 7.0  # Karras et al. (2022), eq. 5; diffusers hard-codes it


class FlowMatchError(UserError, ValueError):
    """A scheduler config or step count this runtime does not reproduce: one line naming the field."""


@dataclass(frozen=True)
class FlowSchedule:
    """Step i runs the transformer at timesteps[i] and moves sigmas[i] -> sigmas[i + 1]; float32, N and N + 1."""

    sigmas: np.ndarray
    timesteps: np.ndarray


# ---------------------------------------------------------------- config check


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _refuse(cfg: FlowMatchSchedulerConfig, field: str, why: str) -> FlowMatchError:
    return FlowMatchError(f"scheduler {field}={getattr(cfg, field)!r} is not supported: {why}")


def check_config(cfg: FlowMatchSchedulerConfig) -> None:
    """Raise a one-line FlowMatchError for the first field diffusers fails on or this runtime does not reproduce."""
    for field in FLAGS:
        if not isinstance(getattr(cfg, field), bool):
            raise _refuse(cfg, field, "use true or false")
    if cfg.use_beta_sigmas:
        raise _refuse(cfg, "use_beta_sigmas", "beta sigmas need scipy.stats, not a runtime dependency")
    if cfg.use_karras_sigmas and cfg.use_exponential_sigmas:
        raise _refuse(cfg, "use_exponential_sigmas", "use_karras_sigmas is true too (diffusers allows one)")
    if cfg.time_shift_type not in TIME_SHIFT_TYPES:
        raise _refuse(cfg, "time_shift_type", f"use one of {', '.join(TIME_SHIFT_TYPES)}")
    if isinstance(cfg.num_train_timesteps, bool) or not isinstance(cfg.num_train_timesteps, int):
        raise _refuse(cfg, "num_train_timesteps", "use an integer")
    if not (_is_number(cfg.shift) and cfg.shift > 0):
        raise _refuse(cfg, "shift", "use a positive number")
    if cfg.shift_terminal is not None and not (_is_number(cfg.shift_terminal) and cfg.shift_terminal < 1):
        raise _refuse(cfg, "shift_terminal", "use a number below 1, or null")
    # LTXPipeline computes mu from these whether or not the shift is dynamic (a None crashes it)
    for field in ("base_shift", "max_shift"):
        if not _is_number(getattr(cfg, field)):
            raise _refuse(cfg, field, "use a number")
    for field in ("base_image_seq_len", "max_image_seq_len"):
        if not _is_number(getattr(cfg, field)):
            raise _refuse(cfg, field, "use a number")
    if cfg.max_image_seq_len == cfg.base_image_seq_len:
        raise _refuse(cfg, "max_image_seq_len", "mu divides by its difference to base_image_seq_len")


# ---------------------------------------------------------------- schedule


def video_sequence_length(latent_frames: int, latent_height: int, latent_width: int) -> int:
    """The pipeline's seq_len for mu: F' * H' * W' (the token count S when patch sizes are 1, as in LTX)."""
    return latent_frames * latent_height * latent_width


def calculate_shift(seq_len: int, cfg: FlowMatchSchedulerConfig) -> float:
    """mu = seq_len * m + (base_shift - m * base_seq), m = (max_shift - base_shift) / (max_seq - base_seq); Python floats."""
    m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    b = cfg.base_shift - m * cfg.base_image_seq_len
    return seq_len * m + b


def time_shift(cfg: FlowMatchSchedulerConfig, mu: float, t: np.ndarray) -> np.ndarray:
    """exponential: e^mu / (e^mu + (1/t - 1)); linear: mu / (mu + (1/t - 1)); float32.

    diffusers raises (1/t - 1) to its `sigma` argument, which LTX passes as 1.0: x ** 1 is x exactly.
    """
    with np.errstate(over="ignore"):
        scale = F32(math.exp(min(mu, 100.0)) if cfg.time_shift_type == "exponential" else mu)
    if not np.isfinite(scale):  # diffusers' sigmas are inf / inf = NaN past mu ~ 88.7 (e^mu beyond float32)
        raise FlowMatchError(f"the video is too large for the dynamic shift: mu = {mu:.4g} overflows float32")
    return scale / (scale + (F32(1) / t - F32(1)))


def fixed_shift(shift: float, t: np.ndarray) -> np.ndarray:
    """shift * t / (1 + (shift - 1) * t), float32 (SD3's resolution-independent shift)."""
    return F32(shift) * t / (F32(1) + F32(shift - 1) * t)


def stretch_to_terminal(t: np.ndarray, shift_terminal: float) -> np.ndarray:
    """1 - (1 - t) / s with s = (1 - t[-1]) / (1 - shift_terminal): the last sigma becomes shift_terminal."""
    one_minus_z = F32(1) - t
    scale = one_minus_z[-1] / F32(1 - shift_terminal)
    return F32(1) - one_minus_z / scale


def karras_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, float64 [n], as diffusers' _convert_to_karras."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / RHO), sigma_max ** (1 / RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** RHO


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Evenly spaced in log sigma from sigma_max to sigma_min, float64 [n], as diffusers' _convert_to_exponential."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def make_schedule(cfg: FlowMatchSchedulerConfig, num_inference_steps: int, seq_len: int) -> FlowSchedule:
    """LTXPipeline's retrieve_timesteps(scheduler, N, sigmas=linspace(1, 1/N, N), mu=calculate_shift(seq_len)).

    seq_len: video_sequence_length(F', H', W'); it matters only with use_dynamic_shifting.
    """
    check_config(cfg)
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise FlowMatchError(f"num_inference_steps must be an integer of at least 1, got {n!r}")
    n = int(n)
    if n == 1 and cfg.shift_terminal:
        # one sigma is also the last: the stretch divides 0 by 0 and diffusers' sigma is NaN
        raise FlowMatchError("num_inference_steps=1 is not supported with shift_terminal: use at least 2")
    sigmas = np.linspace(1.0, 1 / n, n).astype(F32)
    if cfg.use_dynamic_shifting:
        sigmas = time_shift(cfg, calculate_shift(seq_len, cfg), sigmas)
    else:
        sigmas = fixed_shift(cfg.shift, sigmas)
    if cfg.shift_terminal:  # diffusers' truthiness: 0 and None both mean no stretch
        sigmas = stretch_to_terminal(sigmas, cfg.shift_terminal)
    if cfg.use_karras_sigmas:
        sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n).astype(F32)
    elif cfg.use_exponential_sigmas:
        sigmas = exponential_sigmas(sigmas[-1].item(), sigmas[0].item(), n).astype(F32)
    train = F32(cfg.num_train_timesteps)
    if cfg.invert_sigmas:  # Mochi's: timesteps of the inverted sigmas, 1 appended
        sigmas = F32(1) - sigmas
        return FlowSchedule(np.append(sigmas, F32(1)), sigmas * train)
    return FlowSchedule(np.append(sigmas, F32(0)), sigmas * train)


# ---------------------------------------------------------------- steps


def step(velocity: np.ndarray, sample: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """Euler: x + (sigma_next - sigma) * v, float32 (diffusers upcasts the sample; the pipeline's v is float32)."""
    dt = F32(sigma_next) - F32(sigma)
    return sample.astype(F32, copy=False) + dt * velocity.astype(F32, copy=False)


def stochastic_step(
    velocity: np.ndarray, sample: np.ndarray, sigma: float, sigma_next: float, noise: np.ndarray
) -> np.ndarray:
    """stochastic_sampling: x0 = x - sigma v, then (1 - sigma_next) x0 + sigma_next * noise, float32.

    noise: a fresh standard normal of the sample's shape each step (diffusers draws it from torch's
    global generator: the pipeline passes it none, so its draws cannot be replayed).
    """
    sample = sample.astype(F32, copy=False)
    sigma, sigma_next = F32(sigma), F32(sigma_next)
    x0 = sample - sigma * velocity.astype(F32, copy=False)
    return (F32(1) - sigma_next) * x0 + sigma_next * noise.astype(F32, copy=False)
