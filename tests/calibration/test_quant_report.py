"""The quantized-UNet accuracy section: per-step UNet error and end-to-end frame error vs float."""

from __future__ import annotations

import json

import pytest

from svd_trt.calibration.report import markdown, psnr, quantized_report

# End-to-end bound, int8 vs float pipeline from the same noise (the fixture's small random
# model, 64x64, 2 frames, 3 steps, held-out run). Measured here: 24.4 dB PSNR, frame max abs
# 0.47; over 24 other image x seed x conditioning settings 23.5-26.9 dB, max abs 0.29-0.57.
# For scale, the float pipeline with a different seed gives 17.9 dB / 0.72: the bound (2.5 dB
# below the worst measurement) shows the int8 UNet follows the float trajectory. Random
# weights are a weak proxy: int8 noise (~38 dB SQNR per layer here) simply accumulates over
# ~100 quantized layers; trained weights have outliers these lack (docs/quantization.md).
MIN_PSNR_DB = 21.0
MAX_FRAME_ABS = 0.65


@pytest.fixture(scope="module")
def report(small_int8, small_calibration):
    return quantized_report(small_int8[0], small_calibration[0], e2e_runs=1, threads=2)


def test_int8_pipeline_within_tolerance(report):
    (e2e,) = report["end_to_end"]
    assert e2e["split"] == "held_out"
    assert e2e["psnr_db"] >= MIN_PSNR_DB, e2e
    assert e2e["max_abs"] <= MAX_FRAME_ABS, e2e


def test_report_has_per_step_errors_and_sizes(report, small_calibration):
    steps = report["unet_steps"]
    n_steps = small_calibration[1]["options"]["num_inference_steps"]
    assert sorted(steps["per_step"]) == list(range(n_steps))  # one held-out run: every step once
    assert steps["samples"] == n_steps
    for e in steps["per_step"].values():
        assert 0 < e["mean_abs"] <= e["max_abs"] and 0 < e["rel"] < 1
    assert report["precision"] == "int8"
    assert report["sizes"]["quantized_bytes"] < 0.7 * report["sizes"]["float_bytes"]
    json.dumps(report)  # goes into report.json as is


def test_markdown_section(report):
    text = markdown(report)
    assert text.startswith("## Quantized UNet (int8)")
    assert "PSNR" in text and "| all |" in text


def test_psnr():
    import numpy as np

    a = np.zeros((2, 2))
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
