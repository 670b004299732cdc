"""LTX's flow-match schedule and Euler step against diffusers' FlowMatchEulerDiscreteScheduler, driven as
LTXPipeline drives it (sigmas = linspace(1, 1/N, N), mu from the video's latent size).

Bit-exact where asserted: both sides run the same IEEE float32 +, -, *, / in the same order, and the
only transcendental functions are Python's math.exp and numpy's float64 exp/power, called on the same
values on both sides (no torch math kernel is involved), so the equality holds on any CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift as diffusers_shift

from svd_trt.families.ltx import flow_match as fm
from svd_trt.families.ltx.config import FlowMatchSchedulerConfig

# Lightricks/LTX-Video's scheduler_config.json (0.9.x)
LTX = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 1024,
    "base_shift": 0.95,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 2.05,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.1,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
CONFIGS = {
    "ltx": LTX,
    "defaults": {},
    "fixed_shift": {"shift": 3.0},
    "fixed_shift_terminal": {"shift": 2.5, "shift_terminal": 0.05},
    "dynamic_linear": {**LTX, "time_shift_type": "linear"},
    "dynamic_no_terminal": {**LTX, "shift_terminal": None},
    "karras": {**LTX, "use_karras_sigmas": True},
    "exponential": {"shift": 3.0, "use_exponential_sigmas": True},
    "inverted": {**LTX, "invert_sigmas": True},
    "train_500": {**LTX, "num_train_timesteps": 500},
}
# (F', H', W'): the real default video (161 frames, 512x704), a tiny one, one past max_image_seq_len
LATENT_SIZES = ((21, 16, 22), (2, 2, 3), (9, 24, 32))


def _diffusers(config: dict, n: int, seq_len: int) -> FlowMatchEulerDiscreteScheduler:
    """LTXPipeline.__call__'s schedule: its sigmas, its mu (from config.get with the pipeline's defaults)."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    c = sched.config
    mu = diffusers_shift(
        seq_len,
        c.get("base_image_seq_len", 256),
        c.get("max_image_seq_len", 4096),
        c.get("base_shift", 0.5),
        c.get("max_shift", 1.15),
    )
    sched.set_timesteps(n, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return sched


@pytest.mark.parametrize("size", LATENT_SIZES)
@pytest.mark.parametrize("n", (1, 2, 3, 8, 50))
@pytest.mark.parametrize("name", CONFIGS)
def test_schedule_is_diffusers(name, n, size):
    config = CONFIGS[name]
    seq_len = fm.video_sequence_length(*size)
    cfg = FlowMatchSchedulerConfig.from_dict(config)
    if n == 1 and cfg.shift_terminal:
        with pytest.raises(fm.FlowMatchError, match="num_inference_steps=1"):
            fm.make_schedule(cfg, n, seq_len)
        return
    ref = _diffusers(config, n, seq_len)
    ours = fm.make_schedule(cfg, n, seq_len)
    assert ours.sigmas.dtype == ours.timesteps.dtype == np.float32
    assert ours.sigmas.shape == (n + 1,) and ours.timesteps.shape == (n,)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_golden_ltx_schedule():
    """The real config at 161 frames, 512x704: mu from 7392 tokens; the last sigma is shift_terminal."""
    cfg = FlowMatchSchedulerConfig.from_dict(LTX)
    seq_len = fm.video_sequence_length(21, 16, 22)
    assert seq_len == 7392
    assert fm.calculate_shift(seq_len, cfg) == pytest.approx(0.95 + (7392 - 1024) * 1.1 / 3072, rel=1e-12)
    s = fm.make_schedule(cfg, 50, seq_len)
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0 and s.timesteps[0] == 1000.0
    # float32 rounding of the stretch, one part in 2^24 of 1
    np.testing.assert_allclose(s.sigmas[-2], 0.1, atol=2**-23)
    assert np.all(np.diff(s.sigmas) < 0)


def test_n_equals_1_nan_in_diffusers():
    """What our refusal stands for: diffusers' one-step schedule with shift_terminal is NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _diffusers(LTX, 1, 100)
    assert np.isnan(ref.sigmas[0].item())


@pytest.mark.parametrize(
    "change, field",
    (
        ({"use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_exponential_sigmas"),
        ({"time_shift_type": "cosine"}, "time_shift_type"),
        ({"base_shift": None}, "base_shift"),
        ({"max_image_seq_len": 1024}, "max_image_seq_len"),
        ({"shift_terminal": 1.0}, "shift_terminal"),
        ({"shift": 0.0}, "shift"),
        ({"invert_sigmas": None}, "invert_sigmas"),
    ),
)
def test_refused_configs_name_the_field(change, field):
    cfg = FlowMatchSchedulerConfig.from_dict({**LTX, **change})
    with pytest.raises(fm.FlowMatchError, match=f"scheduler {field}=") as e:
        fm.make_schedule(cfg, 10, 100)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("n", (0, -1, 2.0, True))
def test_bad_step_counts(n):
    with pytest.raises(fm.FlowMatchError, match="num_inference_steps"):
        fm.make_schedule(FlowMatchSchedulerConfig.from_dict(LTX), n, 100)


def test_overflowing_mu_is_refused():
    """e^mu past float32's range: diffusers' sigmas are inf / inf = NaN."""
    cfg = FlowMatchSchedulerConfig.from_dict(LTX)
    with pytest.raises(fm.FlowMatchError, match="too large"):
        fm.make_schedule(cfg, 10, 300_000)


@pytest.mark.parametrize("name", ("ltx", "inverted", "karras"))
def test_loop_is_diffusers(name):
    """A whole t2v loop of scheduler.step on packed latents [B, S, C] equals our steps bit for bit."""
    config, n, seq_len = CONFIGS[name], 7, fm.video_sequence_length(2, 2, 3)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 12, 8), dtype=np.float32)
    velocities = rng.standard_normal((n, 2, 12, 8), dtype=np.float32)
    ref = _diffusers(config, n, seq_len)
    x_ref = torch.from_numpy(x0)
    for t, v in zip(ref.timesteps, velocities):
        x_ref = ref.step(torch.from_numpy(v), t, x_ref, return_dict=False)[0]
    s = fm.make_schedule(FlowMatchSchedulerConfig.from_dict(config), n, seq_len)
    x = x0
    for i, v in enumerate(velocities):
        x = fm.step(v, x, s.sigmas[i], s.sigmas[i + 1])
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, x_ref.numpy())


def test_stochastic_step_is_diffusers():
    config = {**LTX, "stochastic_sampling": True}
    ref = _diffusers(config, 4, 12)
    s = fm.make_schedule(FlowMatchSchedulerConfig.from_dict(config), 4, 12)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 12, 8), dtype=np.float32)
    v = rng.standard_normal((1, 12, 8), dtype=np.float32)
    torch.manual_seed(5)  # diffusers draws from torch's global generator
    x_ref = ref.step(torch.from_numpy(v), ref.timesteps[0], torch.from_numpy(x), return_dict=False)[0]
    torch.manual_seed(5)
    noise = torch.randn(x.shape).numpy()
    ours = fm.stochastic_step(v, x, s.sigmas[0], s.sigmas[1], noise)
    np.testing.assert_array_equal(ours, x_ref.numpy())


def test_from_mapping_defaults_are_diffusers():
    """Missing keys take FlowMatchEulerDiscreteScheduler's defaults; `_class_name` and unknown keys are ignored."""
    ours = FlowMatchSchedulerConfig.from_dict({"_class_name": "x", "_diffusers_version": "0.32"})
    ref = FlowMatchEulerDiscreteScheduler().config
    for field in FlowMatchSchedulerConfig.__dataclass_fields__:
        assert getattr(ours, field) == ref[field], field


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) >= "2.0.0", reason="numpy >= 2 has only NEP 50")
@pytest.mark.parametrize("name", CONFIGS)
def test_same_bits_under_numpy_1_promotion(name):
    """The serve extra pins numpy < 2: its value-based promotion must not change a bit."""
    cfg = FlowMatchSchedulerConfig.from_dict(CONFIGS[name])
    results = []
    for state in ("legacy", "weak"):
        previous = np._get_promotion_state()
        np._set_promotion_state(state)
        try:
            s = fm.make_schedule(cfg, 9, 700)
            results.append(
                (s.sigmas, s.timesteps, fm.step(np.ones(3, np.float32), np.ones(3), s.sigmas[0], 0.3))
            )
        finally:
            np._set_promotion_state(previous)
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
