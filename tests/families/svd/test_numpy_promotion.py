"""The runtime computes the same under numpy 1.x's value-based promotion and numpy 2's NEP 50.

The serve extra pins numpy < 2, so a serving machine runs the runtime on numpy 1.26 while the
runtime was written and checked against diffusers on numpy 2. tests/conftest.py switches the
test process to NEP 50 ("weak") promotion for the diffusers reference; here the runtime runs
under both rules and must give bit-identical results.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from scheduler_configs import SCHEDULER_CONFIGS, scheduler_config

from svd_trt.families.svd import euler
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.families.svd.pipeline import SVDPipeline
from svd_trt.runtime.image_preprocess import load_image

pytestmark = pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) >= "2.0.0", reason="numpy >= 2 has only NEP 50 promotion"
)


@contextmanager
def promotion(state: str):
    previous = np._get_promotion_state()
    np._set_promotion_state(state)
    try:
        yield
    finally:
        np._set_promotion_state(previous)


def _under_both(run):
    results = {}
    for state in ("legacy", "weak"):
        with promotion(state):
            results[state] = run()
    return results["legacy"], results["weak"]


@pytest.mark.parametrize("dtype", (np.float32, np.float16))
@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
def test_schedule_and_loop(name, dtype):
    cfg = scheduler_config(name)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 3, 4, 8, 10), dtype=np.float32).astype(dtype)
    outputs = rng.standard_normal((60, 1, 3, 4, 8, 10), dtype=np.float32).astype(dtype)

    def run():
        schedule = euler.make_schedule(cfg, 25)
        calls = iter(outputs)
        final = euler.sample_euler(lambda x, t: next(calls), noise, schedule, cfg.prediction_type)
        return schedule.sigmas, schedule.timesteps, final

    legacy, weak = _under_both(run)
    for a, b in zip(legacy, weak):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_pipeline(tiny_engines):
    pipe = SVDPipeline.from_engine_dir(tiny_engines)
    photo = load_image(Path(__file__).resolve().parents[3] / "runtime" / "assets" / "coffee.jpg")
    opts = GenerationOptions(num_frames=2, height=32, width=48, num_inference_steps=3, seed=0)
    legacy, weak = _under_both(lambda: pipe(photo, opts).frames)
    np.testing.assert_array_equal(legacy, weak)
