"""Calibration capture: recorded UNet inputs on disk, read back, split, and the size cap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svd_trt.calibration.capture import (
    CalibrationError,
    RecordingRunner,
    capture_calibration,
    choose_calls,
    default_images,
    plan_runs,
)
from svd_trt.calibration.dataset import CalibrationDataError, load_calibration, load_index
from svd_trt.families.svd import euler
from svd_trt.families.svd.options import GenerationOptions


def test_capture_writes_every_step_with_metadata(small_calibration, small_engines):
    out, index = small_calibration
    manifest = small_engines[1]
    opts = index["options"]
    runs, steps, frames = len(index["runs"]), opts["num_inference_steps"], opts["num_frames"]
    assert index == json.loads((out / "index.json").read_text())
    assert index["calls_total"] == index["calls_kept"] == runs * steps
    assert not index["subsampled"]
    assert len(list(out.glob("step-*.npz"))) == runs * steps
    sigmas = euler.make_schedule(manifest.model.scheduler, steps).sigmas
    images = {p.name for p in default_images()}
    for entry, sample in zip(index["samples"], load_calibration(out)):
        assert entry["image"] in images
        assert sample["sample"].shape == (2, frames, manifest.model.unet.in_channels, 8, 8)  # CFG batch 2
        assert sample["encoder_hidden_states"].shape == (2, 1, manifest.model.clip.projection_dim)
        assert sample["added_time_ids"].shape == (2, 3)
        assert all(a.dtype == np.float32 for a in sample.values())
        assert entry["sigma"] == pytest.approx(float(sigmas[entry["step"]]))
        # The timestep the pipeline fed is 0.25 ln(sigma) of the recorded step: ours rounds numpy's
        # float64 log (within a float64 ulp on every CPU path) to float32, so it is within 2^-24
        # relative of this float64 value even where sigma ~ 1 (same sigma, no cancellation after it).
        np.testing.assert_allclose(sample["timestep"], 0.25 * np.log(entry["sigma"]), rtol=1e-5)
        fps, motion, aug = sample["added_time_ids"][0]
        assert (fps + 1, motion) == (entry["fps"], entry["motion_bucket_id"])
        assert aug == pytest.approx(entry["noise_aug_strength"])


def test_runs_vary_and_split(small_calibration):
    out, index = small_calibration
    runs = index["runs"]
    assert len({r["seed"] for r in runs}) == len(runs)
    assert len({(r["motion_bucket_id"], r["noise_aug_strength"]) for r in runs}) == len(runs)
    assert [r["split"] for r in runs] == ["calibration", "calibration", "held_out"]
    n = index["options"]["num_inference_steps"]
    assert len(load_calibration(out, "calibration")) == 2 * n
    assert len(load_calibration(out, "held_out")) == n


def test_size_cap_subsamples_evenly(small_engines, small_calibration, tmp_path):
    one = sum(p.stat().st_size for p in small_calibration[0].glob("step-00000.npz"))
    cap = int(2.5 * one) + 4096  # room for two samples with the overhead estimate, not three
    index = capture_calibration(
        small_engines[0],
        None,
        tmp_path,
        GenerationOptions(num_frames=2, height=64, width=64, num_inference_steps=2, seed=0),
        runs=2,
        max_bytes=cap,
        threads=2,
    )
    assert index["subsampled"] and index["calls_total"] == 4 and index["calls_kept"] == 2
    assert "size cap" in index["note"]
    assert index["bytes"] <= cap
    assert sum(p.stat().st_size for p in tmp_path.glob("step-*.npz")) <= cap
    assert [(e["run"], e["step"]) for e in index["samples"]] == [(0, 0), (1, 1)]  # spread over runs
    assert len(load_calibration(tmp_path)) == 2


def test_choose_calls_and_plans():
    assert choose_calls(10, 20) == set(range(10))
    assert choose_calls(10, 3) == {0, 4, 9}  # first, middle, last: early and late sigmas both kept
    plans = plan_runs(default_images(), 5, seed=3)
    assert [p.seed for p in plans] == [3, 4, 5, 6, 7]
    assert [p.split for p in plans].count("held_out") == 1
    assert all(1 <= p.motion_bucket_id <= 255 and 0 <= p.noise_aug_strength <= 0.1 for p in plans)
    assert plan_runs(default_images(), 1)[0].split == "calibration"


def test_recording_runner_passes_through():
    class Double:
        name = "unet"

        def run(self, inputs):
            return {"out": inputs["x"] * 2}

    seen = []
    runner = RecordingRunner(Double(), seen.append)
    assert runner.name == "unet"
    assert runner.run({"x": np.ones(2)})["out"].tolist() == [2, 2]
    assert len(seen) == 1


def test_missing_index_is_one_line(tmp_path):
    with pytest.raises(CalibrationDataError, match="not a calibration directory"):
        load_index(tmp_path)


def test_cap_below_one_call_is_one_line(small_engines, tmp_path):
    with pytest.raises(CalibrationError, match="holds no UNet call"):
        capture_calibration(
            small_engines[0],
            None,
            tmp_path,
            GenerationOptions(height=64, width=64, num_inference_steps=1),
            runs=1,
            max_bytes=100,
        )
