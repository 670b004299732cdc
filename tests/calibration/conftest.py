"""Calibration fixtures: one capture and one INT8 UNet of the small random model, shared."""

from __future__ import annotations

import pytest

# Small enough for the test budget, big enough to pass every UNet block: the small model's
# four levels need latents in multiples of 8 (64 px); 2 frames keep the temporal layers live.
CAPTURE = {"runs": 3, "steps": 3, "frames": 2, "height": 64, "width": 64}


@pytest.fixture(scope="session")
def small_calibration(small_engines, tmp_path_factory):
    from svd_trt.calibration.capture import capture_calibration

    engine_dir, _, _ = small_engines
    out = tmp_path_factory.mktemp("calibration") / "small"
    index = capture_calibration(engine_dir, None, out, threads=2, **CAPTURE)
    return out, index


@pytest.fixture(scope="session")
def small_int8(small_engines, small_calibration, tmp_path_factory):
    """A copy of the small engine directory whose `unet` is the INT8 QDQ file."""
    from svd_trt.calibration.quantize import quantize_unet

    out = tmp_path_factory.mktemp("engines") / "small-int8"
    path = quantize_unet(small_engines[0], small_calibration[0], out=out)
    return out, path
