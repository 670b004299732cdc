"""How far our Euler schedule and sampling loop may sit from diffusers' on any CPU: first-order bounds.

test_euler.py shows, with torch's sqrt/exp/log and linspace swapped into ours, that every other float32
operation is diffusers' own, in the same order (bit-identical on every CPU). What still depends on the
CPU is how those primitives round:
- torch's float32 sqrt, exp and log are within 1 ulp, not correctly rounded: MKL's VML (HA mode) for
  arrays, whose code path MKL picks by CPU (MKL_ENABLE_INSTRUCTIONS), SLEEF or libm for 0-d tensors.
  Ours are correctly rounded (within 1/2 ulp), so on one input the two differ by at most 1.5 ulp:
  PRIMITIVE = 3U relative (U = 2^-24; half an ulp of x is at most U|x|, one ulp at most 2U|x|).
- torch.linspace rounds once per value on ATen's AVX2/AVX-512 kernels (a fused multiply-add, as
  euler.linspace_f32) and twice on its default kernel (unfused_linspace below).
- numpy's float32 log of the training sigmas is the same function on both sides, within 4 ulp of the
  correctly rounded value (its AVX2/AVX-512 loops; libm elsewhere is within 1), but its inputs may
  differ: two inputs' correctly rounded logs differ by the inputs' relative change plus 1 ulp, and each
  result may add 4: NUMPY_LOG = 9 ulp = 18U per unit of |log x|.
test_euler.py checks these premises on the CPU it runs on (test_*_bounds_premise, test_torch_linspace_*).
Every other operation is IEEE-rounded on both sides. Where its inputs differ it moves its result by the
propagated difference plus one rounding on each side: 2U|result| (2 * U16 for a float16 cast).

The bounds carry these through each stage, element by element: relative for sigmas (e), absolute for
timesteps and latents. They are worst cases (every rounding in a chain may go the wrong way), so they sit
above what any one CPU shows; the exact path is what pins every rounding. First order: products of two
U-sized terms are dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from svd_trt.families.svd import euler
from svd_trt.families.svd.config import SchedulerConfig

U = 2.0**-24  # float32 unit roundoff
U16 = 2.0**-11  # float16 unit roundoff
PRIMITIVE = 3 * U  # torch's sqrt/exp/log (<= 1 ulp) against ours (<= 1/2 ulp)
NUMPY_LOG = 18 * U  # numpy's float32 log of two nearby inputs, per unit of |log x| (above)
F32 = np.float32


def unfused_linspace(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace on ATen's default CPU kernel: start + (step * i), two float32 roundings."""
    start32, end32 = F32(start), F32(end)
    if n == 1:
        return np.array([start32])
    step = (end32 - start32) / F32(n - 1)
    i = np.arange(n)
    head = start32 + step * i.astype(F32)
    tail = end32 - step * (n - 1 - i).astype(F32)
    return np.where(i < n // 2, head, tail)


def linspace_bound(start: float, end: float) -> float:
    """|fused - unfused|: step * i is rounded (<= U |end - start| / 2 for i < n/2, mirrored for the tail),
    then each sum rounds once (<= U max(|start|, |end|) each): <= 3U max(|start|, |end|)."""
    return 3 * U * max(abs(float(F32(start))), abs(float(F32(end))))


# ---------------------------------------------------------------- schedule


def _linspace_term(cfg: SchedulerConfig) -> np.ndarray:
    """The training sigmas' relative change between torch's two linspace kernels, computed exactly (both
    are numpy's IEEE float32 arithmetic): zero unless the betas come from a linspace."""
    fused = euler.train_sigmas(cfg).astype(np.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(euler, "linspace_f32", unfused_linspace)
        unfused = euler.train_sigmas(cfg)
    return np.abs(fused - unfused) / fused


def _zero_snr_alpha_bar_bound(cfg: SchedulerConfig) -> np.ndarray:
    """Relative bound on alpha_bar after Lin et al.'s rescale, which shifts sqrt(alpha_bar) by its last
    value: a difference of near-equal terms, so its error is absolute, and relative near t = T."""
    plain = dataclasses.replace(cfg, rescale_betas_zero_snr=False)
    root = np.sqrt(np.cumprod(1 - euler.betas(plain).astype(np.float64)))  # torch's sqrt: PRIMITIVE each
    first, last = root[0], root[-1]
    gap = first - last
    shifted = root - last  # two perturbed roots, one rounding
    e_scale = PRIMITIVE + (PRIMITIVE * (first + last) + 2 * U * gap) / gap + 2 * U  # first / (first - last)
    scale = first / gap
    new_root = shifted * scale
    d_root = scale * (PRIMITIVE * (root + last) + 2 * U * shifted) + new_root * (e_scale + 2 * U)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_ab = 2 * d_root / new_root + 2 * U  # alpha_bar = new_root^2, one rounding
        ab = new_root**2
        ratio = ab[1:] / ab[:-1]
        # diffusers' alphas are 1 - (1 - ratio): exact for ratio >= 1/2 (Sterbenz), one rounding of
        # 1 - ratio below; the division rounds once. A perturbation of one alpha_bar cancels between
        # the two ratios it enters, so the cumulative product carries only e_ab at j and at 0.
        e_alpha = 2 * U + np.where(ratio < 0.5, 2 * U * (1 - ratio) / ratio, 0.0)
    e_cum = e_ab + e_ab[0] + np.concatenate([[0.0], np.cumsum(e_alpha)]) + 2 * U  # + the float32 product
    e_cum[-1] = 0.0  # both set alpha_bar_T to 2^-24
    return e_cum


def train_sigma_bound(cfg: SchedulerConfig) -> np.ndarray:
    """Relative bound per training sigma sqrt((1 - alpha_bar) / alpha_bar), ascending in t."""
    lin = _linspace_term(cfg)
    if not cfg.rescale_betas_zero_snr:
        return lin + PRIMITIVE  # identical alpha_bar: only the final sqrt differs
    ab = np.cumprod(1 - euler.betas(cfg).astype(np.float64))
    ab[-1] = euler.ZERO_SNR_ALPHA_BAR
    # sigma's relative change is alpha_bar's over 2 (1 - alpha_bar): large where 1 - alpha_bar cancels;
    # then 1 - alpha_bar (exact above 1/2) and the division round once each, the sqrt differs by PRIMITIVE
    return lin + _zero_snr_alpha_bar_bound(cfg) / (2 * (1 - ab)) + 2 * U + PRIMITIVE


@dataclasses.dataclass(frozen=True)
class ScheduleBound:
    """Per-element bounds for one make_schedule(cfg, n): relative for sigmas, absolute for timesteps."""

    sigmas: np.ndarray
    timesteps: np.ndarray
    init_noise_sigma: float


def _converted(cfg: SchedulerConfig, pre: np.ndarray, e_pre: np.ndarray, n: int):
    """Karras / exponential sigmas from the range's ends: each end's relative change, weighted by
    d ln sigma_i / d ln end (Karras: r (min / sigma_i)^(1/rho), exponential: r)."""
    lo, e_lo = (cfg.sigma_min, 0.0) if cfg.sigma_min is not None else (pre[-1].item(), e_pre[-1])
    hi, e_hi = (cfg.sigma_max, 0.0) if cfg.sigma_max is not None else (pre[0].item(), e_pre[0])
    r = np.linspace(0, 1, n)
    if cfg.use_karras_sigmas:
        sig = euler.karras_sigmas(lo, hi, n)
        w = r * (lo / sig) ** (1 / euler.RHO)
    else:
        sig = euler.exponential_sigmas(lo, hi, n)
        w = r
    return sig, w * e_lo + (1 - w) * e_hi  # float64 roundings (~1e-16) are dropped


def _discrete_t_bound(sig: np.ndarray, e_sig: np.ndarray, train: np.ndarray, e_train: np.ndarray):
    """sigma_to_t: t = low + (lo - ln sigma) / (lo - hi) over numpy's float32 logs of the training sigmas."""
    log_train = np.log(train)
    d_log = e_train + NUMPY_LOG * np.abs(log_train)
    t = euler.sigma_to_t(sig, log_train.astype(F32))
    low = np.clip(np.floor(t).astype(int), 0, len(train) - 2)
    gaps = np.diff(log_train)
    # a perturbed sigma may sit in a neighbouring interval: take the steepest of the three
    gap = np.minimum.reduce([gaps[np.clip(low + k, 0, len(gaps) - 1)] for k in (-1, 0, 1)])
    worst_log = np.maximum.reduce([d_log[np.clip(low + k, 0, len(train) - 1)] for k in (-1, 0, 1, 2)])
    return (e_sig + 2 * worst_log) / gap + 2 * U * np.abs(t)  # + the float32 cast


def schedule_bound(cfg: SchedulerConfig, n: int) -> ScheduleBound:
    """Bounds for make_schedule(cfg, n) against diffusers' set_timesteps(n), stage by stage as it runs."""
    train32 = euler.train_sigmas(cfg)
    train, e_train = train32.astype(np.float64), train_sigma_bound(cfg)
    T = len(train)
    timesteps = euler.spaced_timesteps(cfg, n)  # the same float32 arithmetic on both sides
    plain = dataclasses.replace(cfg, use_karras_sigmas=False, use_exponential_sigmas=False)
    pre = np.asarray(euler._inference_sigmas(plain, n, train32, timesteps), np.float64)
    if cfg.interpolation_type == "linear":
        # a convex combination of two training sigmas: their worse relative change
        lo = np.clip(np.floor(timesteps).astype(int), 0, T - 1)
        e_pre = np.maximum(e_train[lo], e_train[np.minimum(lo + 1, T - 1)]) + 2 * U  # + float32 cast
    else:  # exp(linspace(ln max, ln min)) in float32: ends' log change, linspace's, then exp's
        ends = np.log(train[[-1, 0]])
        d_ends = e_train[[-1, 0]] + NUMPY_LOG * np.abs(ends)
        # linspace of perturbed ends: their worse change, the step's two roundings times i / (n - 1)
        # (<= 4U max|end|), each value's rounding (2U max|end|), then the two kernels' difference
        d_lin = d_ends.max() + 6 * U * np.abs(ends).max() + linspace_bound(*ends)
        e_pre = np.full(len(pre), d_lin + PRIMITIVE)
    converted = cfg.use_karras_sigmas or cfg.use_exponential_sigmas
    if converted:
        sig64, e_sig64 = _converted(cfg, pre, e_pre, n)
        e_sig = e_sig64 + 2 * U  # the float32 cast
        t_bound = _discrete_t_bound(sig64, e_sig64, train, e_train)
    else:
        sig64, e_sig = pre, e_pre
        t_bound = np.zeros(len(timesteps))  # the spaced timesteps themselves
    if cfg.final_sigmas_type == "sigma_min":
        sig, e_sig = np.append(sig64, train[0]), np.append(e_sig, e_train[0])
    else:
        sig, e_sig = np.append(sig64, 0.0), np.append(e_sig, 0.0)  # 0 on both sides
    if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
        # t = 0.25 ln sigma: d ln sigma = e; torch's log vs ours: PRIMITIVE |t| (0.25 x is exact)
        t_bound = 0.25 * e_sig[:-1] + PRIMITIVE * 0.25 * np.abs(np.log(sig[:-1]))
    start = len(sig) - len(euler.make_schedule(cfg, n).sigmas)  # where diffusers' first step starts
    return ScheduleBound(e_sig[start:], t_bound, _init_bound(cfg, sig, e_sig))


def _init_bound(cfg: SchedulerConfig, sig: np.ndarray, e_sig: np.ndarray) -> float:
    """max(sigma), or sqrt(max^2 + 1) for the other spacings."""
    m = sig.max()
    e_max = float((e_sig * sig).max() / m)  # the max moves by at most the largest change
    if cfg.timestep_spacing in ("linspace", "trailing"):
        return e_max
    f = m * m / (m * m + 1)
    # the square's rounding (2U of m^2) and the sum's (2U), halved by the sqrt; torch's sqrt vs ours
    return e_max * f + U * f + U + PRIMITIVE


# ---------------------------------------------------------------- sampling loop


def loop_bound(
    schedule: euler.Schedule,
    bound: ScheduleBound,
    noise: np.ndarray,
    w: np.ndarray,
    c: np.ndarray,
    prediction_type: str,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Elementwise bounds on |ours - diffusers'| for each model input and the final sample.

    The loop of euler.sample_euler with the model w * x_in + c * t, run in float64 on the schedule for
    the magnitudes. With this model each step is affine in x per element, x' = A x + ..., so a
    difference carried into a step leaves it times |A| (A < 1 where the step contracts); to it each step
    adds its own: its sigmas' and timestep's bounds through the step's formulas, and 2U|result| for each
    float32 operation (2 * U16 more for each float16 cast).
    """
    rnd = 2 * U
    cast = 2 * U16 if noise.dtype == np.float16 else 0.0
    w, c = w.astype(np.float64), c.astype(np.float64)
    x = noise.astype(np.float64) * float(schedule.init_noise_sigma)
    err = np.abs(x) * (bound.init_noise_sigma + rnd + cast)
    inputs = []
    for k, t in enumerate(schedule.timesteps.astype(np.float64)):
        s0, s1 = float(schedule.sigmas[k]), float(schedule.sigmas[k + 1])
        e0, e1 = bound.sigmas[k], bound.sigmas[k + 1]
        var = s0 * s0 + 1  # sigma^2 + 1 and its sqrt are 0-d float32 on both sides
        e_var = (s0 * s0 / var) * (2 * e0 + rnd) + rnd
        root = np.sqrt(var)
        e_root = e_var / 2 + PRIMITIVE
        x_in = x / root
        own_in = np.abs(x_in) * (e_root + rnd + cast)
        inputs.append(err / root + own_in)
        out = w * x_in + c * t
        own_out = np.abs(w) * own_in + np.abs(c) * bound.timesteps[k]
        own_out += rnd * (np.abs(w * x_in) + np.abs(c * t) + np.abs(out)) + cast * np.abs(out)
        x0, own_x0, dx0_dx = _denoised(
            prediction_type, out, own_out, w / root, x, s0, e0, var, e_var, root, e_root, cast
        )
        h = s1 - s0
        own_h = s1 * e1 + s0 * e0 + rnd * abs(h)
        d = (x - x0) / s0
        own_d = (own_x0 + rnd * np.abs(x - x0)) / s0 + np.abs(d) * (e0 + rnd)
        gain = np.abs(1 + (1 - dx0_dx) * h / s0)  # d x' / d x
        x = x + d * h
        err = (
            gain * err
            + np.abs(h) * own_d
            + np.abs(d) * own_h
            + rnd * np.abs(d * h)
            + (rnd + cast) * np.abs(x)
        )
    return inputs, err


def _denoised(prediction_type, out, own_out, dout_dx, x, s0, e0, var, e_var, root, e_root, cast):
    """x0, its own bound (x taken as exact) and d x0 / d x, as euler.denoised computes x0."""
    rnd = 2 * U
    if prediction_type == "v_prediction":
        scaled = out * (-s0 / root)  # -sigma / sqrt(var) rounds once, then the product
        own_scaled = own_out * (s0 / root) + np.abs(scaled) * (e0 + e_root + rnd + rnd + cast)
        skip = x / var
        x0 = scaled + skip
        own = own_scaled + np.abs(skip) * (e_var + rnd) + rnd * np.abs(x0)
        return x0, own, -s0 / root * dout_dx + 1 / var
    if prediction_type == "epsilon":
        # float16: sigma is cast to the model output's dtype first, and the product is float16
        scaled = s0 * out
        own_scaled = s0 * own_out + np.abs(scaled) * (e0 + cast + (cast or rnd))
        x0 = x - scaled
        return x0, own_scaled + rnd * np.abs(x0), 1 - s0 * dout_dx
    return out, own_out, dout_dx  # sample
