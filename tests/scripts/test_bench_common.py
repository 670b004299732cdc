"""The benchmark scripts' shared pieces that decide what is reported: the frame comparison and the
timing line of `svd-trt infer` read back by scripts/bench_ltx.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from svd_trt.runtime.timings import Timings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_common  # noqa: E402  (scripts/ is not a package)
import bench_ltx  # noqa: E402


def test_max_abs_error_is_the_largest_difference_and_propagates_nan(tmp_path):
    ref = np.zeros((4, 8, 8, 3), np.float32)
    ours = ref.copy()
    ours[2, 3, 4, 1] = -0.25
    np.save(tmp_path / "frames-diffusers.npy", ref)
    np.save(tmp_path / "frames-ours.npy", ours)
    assert bench_common.frame_errors(tmp_path, ["diffusers", "ours"]) == {"ours": 0.25}
    ours[0, 0, 0, 0] = np.nan  # in a frame before the largest difference: max() would skip it
    np.save(tmp_path / "frames-ours.npy", ours)
    assert np.isnan(bench_common.frame_errors(tmp_path, ["diffusers", "ours"])["ours"])
    assert set(bench_common.disagreeing({"ours": float("nan"), "other": 1e-6}, 1e-3)) == {"ours"}


def test_the_timing_line_reads_back():
    """What Timings.summary prints (3 decimals) is what bench_ltx reports: to half a millisecond."""
    t = Timings("transformer", placement="onnxruntime CPUExecutionProvider")
    for stage, seconds in (("T5", 0.0123), ("transformer", 0.25), ("transformer", 0.2504), ("decode", 1.5)):
        t.add(stage, seconds)
    t.total = 2.25
    parsed = bench_ltx.parse_summary(f"wrote x.npy\n{t.summary()}\n")
    expected = {"T5": 0.0123, "transformer": 0.5004, "transformer/step": 0.2502, "decode": 1.5}
    expected.update(overhead=t.overhead, total=2.25)
    assert parsed == pytest.approx(expected, abs=5e-4)
