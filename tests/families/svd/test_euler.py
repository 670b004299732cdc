"""Euler schedules and sampling against diffusers' EulerDiscreteScheduler, for every config it accepts."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys

import euler_bounds as eb
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from scheduler_configs import SCHEDULER_CONFIGS, SVD_SCHEDULER_JSON, scheduler_config

from svd_trt.families.svd import euler
from svd_trt.families.svd.config import SchedulerConfig

SVD = SchedulerConfig()
STEPS = (1, 2, 7, 25)
SHAPE = (1, 3, 4, 8, 10)  # [B, F, C, h, w]


def _diffusers(cfg: SchedulerConfig | dict, n: int) -> EulerDiscreteScheduler:
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    sched = EulerDiscreteScheduler.from_config(d)
    sched.set_timesteps(n)
    return sched


# diffusers' float32 sqrt, exp and log are torch's (MKL on CPU: within 1 ulp, not correctly rounded), and
# its linspace is torch's (one rounding per value on ATen's AVX2/AVX-512 kernels, two on its default one).
# Swapped in, they leave every other operation of ours to be the same IEEE operation as diffusers', on
# every CPU. Without them, euler_bounds.py bounds the difference.
def _torch_sqrt(x):
    return (torch.tensor(np.asarray(x, dtype=np.float32)) ** 0.5).numpy()[()]


def _torch_exp(x):
    return torch.tensor(np.asarray(x, dtype=np.float32)).exp().numpy()[()]


def _torch_log(x):
    """diffusers takes each continuous timestep's log on its own 0-d tensor."""
    x = np.asarray(x, dtype=np.float32)
    return np.array([torch.tensor(v).log().item() for v in x.ravel()], np.float32).reshape(x.shape)


def _torch_linspace(start, end, n):
    return torch.linspace(float(start), float(end), n, dtype=torch.float32).numpy()


def _with_torch_math(fn):
    """Run fn() with torch's sqrt/exp/log and linspace swapped in, then restore ours."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(euler, "_sqrt", _torch_sqrt)
        mp.setattr(euler, "_exp", _torch_exp)
        mp.setattr(euler, "_log", _torch_log)
        mp.setattr(euler, "linspace_f32", _torch_linspace)
        return fn()


def _assert_within(ours, ref, bound, what: str) -> None:
    """|ours - ref| <= bound element by element (a zero bound asks for equality)."""
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    bad = diff > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} beyond the bound; worst at "
        f"{np.unravel_index(np.argmax(diff - bound), diff.shape)}: |diff| {diff.max():.3g}, "
        f"diff / bound {np.max(diff / np.maximum(bound, 1e-300)):.3g}"
    )


# ---------------------------------------------------------------- schedules


def _ulps(a, b) -> np.ndarray:
    """Distance in float32 steps (same-sign finite values)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32))


def test_torch_primitives_are_within_the_bounds_premise():
    """euler_bounds' premise on this CPU's math path: torch's float32 sqrt, exp and log, on arrays (MKL's
    VML) and on 0-d tensors, within 1 ulp of the correctly rounded value; numpy's float32 log within 4."""
    rng = np.random.default_rng(0)
    pos = (10.0 ** rng.uniform(-8, 8, 20_000)).astype(np.float32)  # sigmas, alpha_bars, their ratios
    args = {"sqrt": pos, "log": pos, "exp": rng.uniform(-10, 10, 20_000).astype(np.float32)}
    for name, x in args.items():
        exact = getattr(np, name)(x.astype(np.float64)).astype(np.float32)  # one float32 rounding
        arr = getattr(torch.from_numpy(x), name)().numpy()
        zero_d = np.array([getattr(torch.tensor(v), name)().item() for v in x[:200]], np.float32)
        assert _ulps(arr, exact).max() <= 1 and _ulps(zero_d, exact[:200]).max() <= 1, name
    assert _ulps(np.log(pos), np.log(pos.astype(np.float64)).astype(np.float32)).max() <= 4


@pytest.mark.parametrize(
    "start, end, n",
    [
        (0.00085**0.5, 0.012**0.5, 1000),  # SVD's scaled_linear betas
        (0.0001, 0.02, 1000),
        (0.00085, 0.012, 500),
        (math.log(14.614647), math.log(0.029167), 26),  # log_linear's ln sigma, crossing zero
        (math.log(4096.0), math.log(0.0047), 51),
    ],
)
def test_torch_linspace_is_one_of_two_kernels(start, end, n):
    """ATen's AVX2/AVX-512 kernels round start + step * i once (ours); its default kernel twice. Either
    way the two are within euler_bounds.linspace_bound (absolute: a linspace may cross zero)."""
    ref = _torch_linspace(start, end, n)
    fused, unfused = euler.linspace_f32(start, end, n), eb.unfused_linspace(start, end, n)
    assert np.array_equal(ref, fused) or np.array_equal(ref, unfused)
    assert np.abs(fused.astype(np.float64) - unfused).max() <= eb.linspace_bound(start, end)


def test_golden_values_25_steps():
    """REFERENCE.md: SVD's 25-step schedule."""
    s = euler.make_schedule(SVD, 25)
    assert s.sigmas.dtype == np.float32 and s.timesteps.dtype == np.float32
    assert s.sigmas.shape == (26,) and s.timesteps.shape == (25,)
    np.testing.assert_allclose(s.sigmas[:4], [700.0, 545.72925, 421.56912, 322.45367], rtol=1e-7)
    np.testing.assert_allclose(
        s.sigmas[-3:], [0.0078825, 0.002, 0.0], rtol=1e-5
    )  # 0.0078825 is printed to 5 digits
    assert s.sigmas[-1] == 0.0
    np.testing.assert_allclose(s.init_noise_sigma, 700.00073, rtol=1e-7)
    np.testing.assert_allclose(s.timesteps[0], 0.25 * np.log(700.0), rtol=1e-7)


def _assert_schedule_matches(cfg: SchedulerConfig | dict, n: int) -> None:
    ours_cfg = cfg if isinstance(cfg, SchedulerConfig) else SchedulerConfig.from_dict(cfg)
    ref = _diffusers(cfg, n)
    ref_sigmas, ref_t = ref.sigmas.numpy(), ref.timesteps.numpy()
    ref_init = np.float32(ref.init_noise_sigma)
    exact = _with_torch_math(lambda: euler.make_schedule(ours_cfg, n))
    assert exact.sigmas.dtype == exact.timesteps.dtype == np.float32
    np.testing.assert_array_equal(exact.sigmas, ref_sigmas)
    np.testing.assert_array_equal(exact.timesteps, ref_t)
    assert exact.init_noise_sigma == ref_init
    ours = euler.make_schedule(ours_cfg, n)
    # Our correctly rounded sqrt/exp/log and fused linspace against torch's on this CPU: per-element
    # bounds carried through the schedule's conditioning (relative for sigmas, absolute for timesteps).
    b = eb.schedule_bound(ours_cfg, n)
    _assert_within(ours.sigmas, ref_sigmas, b.sigmas * ref_sigmas, "sigmas")
    _assert_within(ours.init_noise_sigma, ref_init, b.init_noise_sigma * ref_init, "init_noise_sigma")
    _assert_within(ours.timesteps, ref_t, b.timesteps, "timesteps")


def _main_axes():
    """Sigma schedule x interpolation x spacing x (prediction, timestep type)."""
    for sig, interp, spacing, (pred, ttype) in itertools.product(
        ("karras", "exponential", "plain"),
        ("linear", "log_linear"),
        ("linspace", "leading", "trailing"),
        (("v_prediction", "continuous"), ("v_prediction", "discrete"), ("epsilon", "discrete")),
    ):
        change = {
            "use_karras_sigmas": sig == "karras",
            "use_exponential_sigmas": sig == "exponential",
            "interpolation_type": interp,
            "timestep_spacing": spacing,
            "prediction_type": pred,
            "timestep_type": ttype,
        }
        if ttype == "discrete":  # the training range: SVD's 700 repeats discrete timesteps
            change.update(sigma_min=None, sigma_max=None)
        yield pytest.param(change, id=f"{sig}-{interp}-{spacing}-{pred}-{ttype}")


OTHER_AXES = [
    # continuous timesteps need v_prediction: diffusers falls back to discrete ones
    {"prediction_type": "sample", "timestep_type": "continuous", "sigma_min": None, "sigma_max": None},
    {"prediction_type": "epsilon", "timestep_type": "discrete", "sigma_min": 0.03, "sigma_max": 14.6},
    {"sigma_min": None},
    {"sigma_max": None},
    {"final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", "use_karras_sigmas": False, "timestep_type": "discrete"},
    {"beta_schedule": "linear"},
    {
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "timestep_type": "discrete",
        "sigma_max": None,
        "timestep_spacing": "trailing",
    },
    {"beta_schedule": "squaredcos_cap_v2", "final_sigmas_type": "sigma_min"},
    {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": False, "timestep_type": "discrete"},
    {"rescale_betas_zero_snr": True},
    {"rescale_betas_zero_snr": True, "use_karras_sigmas": False, "timestep_spacing": "trailing"},
    {
        "rescale_betas_zero_snr": True,
        "use_karras_sigmas": False,
        "timestep_type": "discrete",
        "beta_schedule": "squaredcos_cap_v2",
        "final_sigmas_type": "sigma_min",
    },
    {
        "trained_betas": tuple(np.linspace(0.0002, 0.03, 400)),
        "sigma_min": None,
        "sigma_max": None,
        "timestep_type": "discrete",
    },  # diffusers' spacing still uses num_train_timesteps (1000)
    {"trained_betas": tuple(np.linspace(0.001, 0.02, 1000)), "use_karras_sigmas": False},
    {"num_train_timesteps": 500, "steps_offset": 0, "use_karras_sigmas": False, "timestep_type": "discrete"},
    {"steps_offset": 3, "use_karras_sigmas": False, "timestep_spacing": "leading"},
]


@pytest.mark.parametrize("change", [*_main_axes(), *OTHER_AXES])
def test_schedule_matches_diffusers(change):
    cfg = dataclasses.replace(SVD, **change)
    for n in STEPS:
        _assert_schedule_matches(cfg, n)


@pytest.mark.parametrize("n", (1, 2, 4, 25, 50))
def test_svd_schedule_matches_diffusers(n):
    _assert_schedule_matches(SVD, n)


JSON_CASES = {
    "svd": SVD_SCHEDULER_JSON,
    "empty": {},  # every key diffusers' default: epsilon, plain sigmas, linspace, discrete
    "svd_no_karras_key": {k: v for k, v in SVD_SCHEDULER_JSON.items() if k != "use_karras_sigmas"},
    "svd_null_range": {**SVD_SCHEDULER_JSON, "sigma_min": None, "sigma_max": None},
    "svd_no_range": {k: v for k, v in SVD_SCHEDULER_JSON.items() if k not in ("sigma_min", "sigma_max")},
    "exponential_null_range": {
        "use_exponential_sigmas": True,
        "sigma_max": None,
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
    },
}


@pytest.mark.parametrize("name", JSON_CASES)
def test_schedule_from_json_matches_diffusers(name):
    """What a snapshot's scheduler_config.json means, missing keys and nulls included."""
    for n in STEPS:
        _assert_schedule_matches(JSON_CASES[name], n)


@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
def test_shared_configs_are_accepted_and_start_at_sigma_0(name):
    """The end-to-end tests' configs: diffusers' first timestep never repeats, we build the same schedule."""
    cfg = scheduler_config(name)
    for n in (*STEPS, 3, 4, 14, 50):
        ref = _diffusers(cfg, n)
        assert (ref.timesteps == ref.timesteps[0]).sum() == 1
        _assert_schedule_matches(cfg, n)


# ---------------------------------------------------------------- sampling loop


def _linear_model(dtype: np.dtype, seed: int = 0):
    """A fixed random per-element linear map of the model input plus a timestep term: model, w, c."""
    rng = np.random.default_rng(seed)
    w = (1 + 0.3 * rng.standard_normal(SHAPE)).astype(np.float32)
    c = (0.05 * rng.standard_normal(SHAPE)).astype(np.float32)

    def model(x_in: np.ndarray, t) -> np.ndarray:
        return (w * x_in + c * np.float32(t)).astype(dtype)

    return model, w, c


def _diffusers_loop(cfg: SchedulerConfig, n: int, noise: np.ndarray, model):
    """The pipeline's loop: prepare_latents' init_noise_sigma, then scale_model_input, model, step."""
    sched = _diffusers(cfg, n)
    x = torch.from_numpy(noise) * sched.init_noise_sigma
    calls = []
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        calls.append((x_in.numpy().copy(), t.numpy().copy()))
        x = sched.step(torch.from_numpy(model(x_in.numpy(), t.numpy())), t, x).prev_sample
    return x.numpy(), calls


def _our_loop(cfg: SchedulerConfig, n: int, noise: np.ndarray, model):
    calls, progress = [], []

    def recording(x_in, t):
        calls.append((x_in.copy(), t))
        return model(x_in, t)

    schedule = euler.make_schedule(cfg, n)
    x = euler.sample_euler(
        recording, noise, schedule, cfg.prediction_type, lambda i, k: progress.append((i, k))
    )
    assert progress == [(i + 1, len(calls)) for i in range(len(calls))]
    return x, calls


def _noise(dtype: np.dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32).astype(dtype)


def _assert_loop_matches(cfg: SchedulerConfig, n: int, dtype: np.dtype) -> None:
    """Bit-identity with torch's sqrt/exp/log and linspace; without them, euler_bounds' loop bound on every
    model input, timestep and the final sample."""
    (model, w, c), noise = _linear_model(dtype), _noise(dtype)
    ref_x, ref_calls = _diffusers_loop(cfg, n, noise, model)
    exact_x, exact_calls = _with_torch_math(lambda: _our_loop(cfg, n, noise, model))
    assert len(exact_calls) == len(ref_calls)
    for (x_in, t), (ref_in, ref_t) in zip(exact_calls, ref_calls):
        assert x_in.dtype == ref_in.dtype and np.asarray(t).dtype == ref_t.dtype == np.float32
        np.testing.assert_array_equal(x_in, ref_in)
        assert t == ref_t
    assert exact_x.dtype == ref_x.dtype
    np.testing.assert_array_equal(exact_x, ref_x)
    x, calls = _our_loop(cfg, n, noise, model)
    schedule, b = euler.make_schedule(cfg, n), eb.schedule_bound(cfg, n)
    in_bounds, out_bound = eb.loop_bound(schedule, b, noise, w, c, cfg.prediction_type)
    for k, ((x_in, t), (ref_in, ref_t)) in enumerate(zip(calls, ref_calls)):
        _assert_within(x_in, ref_in, in_bounds[k], f"model input {k}")
        _assert_within(t, ref_t, b.timesteps[k], f"timestep {k}")
    _assert_within(x, ref_x, out_bound, "final sample")


@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
@pytest.mark.parametrize("n", (1, 4, 25))
def test_sample_euler_is_diffusers_loop(name, n):
    """Every model input, timestep and the final sample: bit-identical with torch's primitives, and
    within the first-order bound of euler_bounds.loop_bound with ours."""
    _assert_loop_matches(scheduler_config(name), n, np.float32)


@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
@pytest.mark.parametrize("n", (4, 25))
def test_sample_euler_is_diffusers_loop_fp16(name, n):
    """fp16 latents and model outputs: float32 math rounded to fp16 exactly where torch's CPU kernels
    round (bit-identical with torch's primitives). With ours a float32 ulp can flip an fp16 rounding,
    which later steps carry: the loop bound counts a float16 rounding (2^-11 relative) at each cast."""
    _assert_loop_matches(scheduler_config(name), n, np.float16)


def test_sample_euler_where_diffusers_starts_at_sigma_1():
    """Leading spacing with more steps than training steps repeats the first timestep: diffusers'
    index_for_timestep starts at the second match, and log_linear's extra sigma keeps it in range."""
    cfg = dataclasses.replace(
        SVD,
        num_train_timesteps=10,
        use_karras_sigmas=False,
        interpolation_type="log_linear",
        timestep_type="discrete",
    )
    ref = _diffusers(cfg, 12)
    assert (ref.timesteps == ref.timesteps[0]).sum() == 12
    ours = _with_torch_math(lambda: euler.make_schedule(cfg, 12))
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy()[1:])  # 12 steps over sigmas[1:14]
    _assert_loop_matches(cfg, 12, np.float32)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "change, field",
    [
        ({"use_beta_sigmas": True, "use_karras_sigmas": False}, "use_beta_sigmas"),
        ({"use_exponential_sigmas": True}, "use_exponential_sigmas"),  # with use_karras_sigmas
        ({"use_karras_sigmas": None}, "use_karras_sigmas"),
        ({"prediction_type": "x0"}, "prediction_type"),
        ({"prediction_type": None}, "prediction_type"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing"),
        ({"timestep_type": "edm"}, "timestep_type"),
        ({"final_sigmas_type": "none"}, "final_sigmas_type"),
        ({"interpolation_type": "cubic"}, "interpolation_type"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"beta_start": 0.0, "beta_schedule": "linear"}, "beta_start"),
        ({"beta_end": 1.5}, "beta_end"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"num_train_timesteps": 1000.0}, "num_train_timesteps"),
        ({"sigma_min": 0.0}, "sigma_min"),
        ({"sigma_max": "700"}, "sigma_max"),
        ({"steps_offset": None}, "steps_offset"),
        ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr"),
        ({"trained_betas": (0.01,)}, "trained_betas"),
        ({"trained_betas": (0.01, 1.0)}, "trained_betas"),
    ],
)
def test_unsupported_configs_are_refused_before_any_step_count(change, field):
    cfg = dataclasses.replace(SVD, **change)
    with pytest.raises(euler.SchedulerError, match=field) as e:
        euler.check_scheduler(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(euler.SchedulerError, match=field):
        euler.make_schedule(cfg, 25)


def test_scheduler_error_is_a_value_error():
    """The runtime CLI prints ValueErrors as one line."""
    assert issubclass(euler.SchedulerError, ValueError)


def test_svd_and_shared_configs_pass_the_check():
    euler.check_scheduler(SVD)
    for name in SCHEDULER_CONFIGS:
        euler.check_scheduler(scheduler_config(name))


@pytest.mark.parametrize("n", (0, -1, 2.0, True))
def test_bad_step_counts_are_refused(n):
    with pytest.raises(euler.SchedulerError, match="num_inference_steps"):
        euler.make_schedule(SVD, n)


def _diffusers_loop_fails(cfg: SchedulerConfig, n: int) -> None:
    with pytest.raises(IndexError):
        _diffusers_loop(cfg, n, _noise(np.float32), _linear_model(np.float32)[0])


@pytest.mark.parametrize(
    "cfg, n, match",
    [
        # SVD's sigma_max 700 >> the training sigmas (14.6): discrete timesteps repeat 999
        (dataclasses.replace(SVD, timestep_type="discrete"), 25, "sigma_max"),
        (
            SchedulerConfig.from_dict(
                {k: v for k, v in SVD_SCHEDULER_JSON.items() if k != "prediction_type"}
            ),
            25,
            "sigma_max",
        ),  # no prediction_type key: epsilon, hence discrete timesteps
        (
            dataclasses.replace(
                SVD, use_karras_sigmas=False, use_exponential_sigmas=True, timestep_type="discrete"
            ),
            7,
            "sigma_max",
        ),
        # more steps than training steps: "leading" repeats timestep 1
        (dataclasses.replace(SVD, num_train_timesteps=10, use_karras_sigmas=False), 12, "repeat"),
    ],
)
def test_repeated_first_timestep_is_refused_where_diffusers_breaks(cfg, n, match):
    """diffusers starts at the second match of its first timestep and indexes past its last sigma."""
    _diffusers_loop_fails(cfg, n)
    with pytest.raises(euler.SchedulerError, match=match) as e:
        euler.make_schedule(cfg, n)
    assert "\n" not in str(e.value)


def test_runtime_modules_do_not_import_torch():
    """The runtime must run where torch is not installed: not even an indirect import."""
    code = (
        "import sys\n"
        "from svd_trt.families.svd import euler, guidance, clip_preprocess, pipeline\n"
        "from svd_trt.runtime import image_preprocess, infer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
