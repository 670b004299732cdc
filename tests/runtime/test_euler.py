"""Euler / Karras schedule: golden values and step-by-step equality with diffusers' EulerDiscreteScheduler."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from svd_trt.config import SchedulerConfig
from svd_trt.runtime import euler

SVD = SchedulerConfig()
STEPS = (1, 2, 4, 25, 50)


def _diffusers(cfg: SchedulerConfig, n: int) -> EulerDiscreteScheduler:
    sched = EulerDiscreteScheduler.from_config(cfg.to_dict())
    sched.set_timesteps(n)
    return sched


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


@pytest.mark.parametrize("n", STEPS)
def test_schedule_matches_diffusers(n):
    ref, ours = _diffusers(SVD, n), euler.make_schedule(SVD, n)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert ours.init_noise_sigma == np.float32(ref.init_noise_sigma)
    # torch's float32 log is not correctly rounded (neither is numpy's): we round float64's log,
    # so a timestep can sit 1 ulp (<= 1.2e-7 here) from diffusers'.
    np.testing.assert_array_max_ulp(ours.timesteps, ref.timesteps.numpy(), maxulp=1)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "change",
    [
        {"timestep_type": "discrete", "sigma_min": 0.03, "sigma_max": 14.6},
        # continuous timesteps need v-prediction: diffusers falls back to discrete ones
        {"prediction_type": "epsilon", "sigma_min": 0.03, "sigma_max": 14.6},
        {"final_sigmas_type": "sigma_min"},
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "trailing", "beta_schedule": "linear"},
        {"sigma_min": 0.03, "sigma_max": 14.6},
    ],
)
@pytest.mark.parametrize("n", (1, 7, 25))
def test_other_configs_match_diffusers(change, n):
    cfg = dataclasses.replace(SVD, **change)
    ref, ours = _diffusers(cfg, n), euler.make_schedule(cfg, n)
    # sigma_min's final sigma and init_noise_sigma go through torch's MKL sqrt (1 ulp off, at times);
    # discrete timesteps through the training sigmas' sqrt and a float64 interpolation
    np.testing.assert_array_max_ulp(ours.sigmas, ref.sigmas.numpy(), maxulp=1)
    np.testing.assert_array_max_ulp(ours.init_noise_sigma, np.float32(ref.init_noise_sigma), maxulp=1)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"use_karras_sigmas": False}, "Karras"),
        ({"prediction_type": "x0"}, "prediction_type"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing"),
        ({"final_sigmas_type": "none"}, "final_sigmas_type"),
        ({"interpolation_type": "cubic"}, "interpolation_type"),
        ({"final_sigmas_type": "sigma_min", "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
    ],
)
def test_unsupported_configs_raise(change, match):
    with pytest.raises(ValueError, match=match):
        euler.make_schedule(dataclasses.replace(SVD, **change), 25)


def test_zero_steps_raise():
    with pytest.raises(ValueError, match="at least 1"):
        euler.make_schedule(SVD, 0)


def _loops(cfg: SchedulerConfig, n: int, dtype: torch.dtype, seed: int = 0):
    """Yield (diffusers, ours) after scale_model_input and after step, for every step of one run."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 3, 4, 8, 10)
    noise = torch.randn(shape, generator=gen)
    outputs = [torch.randn(shape, generator=gen).to(dtype) for _ in range(n)]
    ref, ours = _diffusers(cfg, n), euler.make_schedule(cfg, n)
    x_ref = (noise * ref.init_noise_sigma).to(dtype)
    x = (noise.numpy() * ours.init_noise_sigma).astype(x_ref.numpy().dtype)
    for i, t in enumerate(ref.timesteps):
        scaled_ref = ref.scale_model_input(x_ref, t)
        scaled = euler.scale_model_input(x, ours.sigmas[i])
        yield scaled_ref.numpy(), scaled
        x_ref = ref.step(outputs[i], t, x_ref).prev_sample
        x = euler.step(outputs[i].numpy(), x, ours.sigmas[i], ours.sigmas[i + 1], cfg.prediction_type)
        yield x_ref.numpy(), x


def _torch_sqrt(x):
    """diffusers' `(...) ** 0.5` on a float32 CPU tensor (MKL: not correctly rounded)."""
    return (torch.tensor(np.asarray(x, dtype=np.float32)) ** 0.5).numpy()[()]


def _max_error(n: int, dtype: torch.dtype, cfg: SchedulerConfig = SVD, seed: int = 0) -> float:
    """Largest |ours - diffusers| over every scaled input and every sample, relative to that array's max."""
    worst = 0.0
    for ref, ours in _loops(cfg, n, dtype, seed):
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        ref, ours = ref.astype(np.float64), ours.astype(np.float64)
        worst = max(worst, float(np.abs(ours - ref).max() / np.abs(ref).max()))
    return worst


@pytest.mark.parametrize("n", STEPS)
def test_every_step_matches_diffusers(n):
    """float32: our IEEE sqrt vs torch's MKL sqrt puts c_in / c_out up to 1 ulp apart; nothing
    amplifies it (measured <= 2.2e-7 of the array's magnitude, 1 to 50 steps): 1e-6 is 4x headroom."""
    assert _max_error(n, torch.float32) <= 1e-6


@pytest.mark.parametrize("n", STEPS)
def test_every_step_bit_identical_with_torch_sqrt(n, monkeypatch):
    """With torch's sqrt swapped in, every other operation is the same IEEE op in the same order."""
    monkeypatch.setattr(euler, "_sqrt", _torch_sqrt)
    for ref, ours in _loops(SVD, n, torch.float32):
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("n", (4, 25))
def test_every_step_matches_diffusers_fp16(n, monkeypatch):
    """fp16 latents and model outputs: float32 math rounded to fp16 exactly where torch's CPU kernels round."""
    for ref, ours in _loops(SVD, n, torch.float16, seed=1):
        # a 1-ulp float32 sqrt difference can flip one fp16 rounding (1 fp16 ulp = 2^-10 relative)
        np.testing.assert_allclose(ours.astype(np.float32), ref, rtol=2**-10, atol=0)
    monkeypatch.setattr(euler, "_sqrt", _torch_sqrt)
    for ref, ours in _loops(SVD, n, torch.float16, seed=1):
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("prediction_type", ("epsilon", "sample"))
def test_other_prediction_types_match_diffusers(prediction_type, monkeypatch):
    # sigmas inside the training range, so discrete timesteps do not repeat
    cfg = dataclasses.replace(SVD, prediction_type=prediction_type, sigma_min=0.03, sigma_max=14.6)
    monkeypatch.setattr(euler, "_sqrt", _torch_sqrt)
    for ref, ours in _loops(cfg, 6, torch.float32, seed=2):
        np.testing.assert_array_equal(ours, ref)


def test_repeated_discrete_timesteps_raise():
    """sigma_max 700 >> the training sigmas: diffusers' discrete timesteps repeat 999 and its indexing breaks."""
    with pytest.raises(ValueError, match="repeat"):
        euler.make_schedule(dataclasses.replace(SVD, timestep_type="discrete"), 25)


def test_sample_euler_is_the_loop():
    schedule = euler.make_schedule(SVD, 6)
    rng = np.random.default_rng(0)
    outputs = rng.standard_normal((6, 2, 3, 4, 5), dtype=np.float32)
    calls = []

    def model(x_in: np.ndarray, t: np.float32) -> np.ndarray:
        calls.append(t)
        return outputs[len(calls) - 1]

    x0 = rng.standard_normal((2, 3, 4, 5), dtype=np.float32) * schedule.init_noise_sigma
    x = x0
    for i in range(6):
        x = euler.step(outputs[i], x, schedule.sigmas[i], schedule.sigmas[i + 1])
    np.testing.assert_array_equal(euler.sample_euler(model, x0, schedule), x)
    np.testing.assert_array_equal(calls, schedule.timesteps)


def test_runtime_modules_do_not_import_torch():
    """The runtime must run where torch is not installed: not even an indirect import."""
    code = (
        "import sys\n"
        "from svd_trt.runtime import euler, guidance, clip_preprocess, image_preprocess\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
