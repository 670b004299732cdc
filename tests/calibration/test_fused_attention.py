"""The attention-fused twin of a TensorRT export, and the ranges measured on it (no modelopt needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from svd_trt.calibration.dataset import load_calibration
from svd_trt.calibration.fused_attention import (
    AttentionPatternError,
    attention_cores,
    fuse_attention,
)
from svd_trt.calibration.tensor_ranges import float_activations, measure, probe_shapes


def _run(path, feed, outputs=None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feed)


@pytest.fixture(scope="module")
def fused(small_trt_onnx, small_calibration, tmp_path_factory):
    """(standard model, fused model path, cores, calibration samples)."""
    work = tmp_path_factory.mktemp("fused")
    standard = onnx.load(str(small_trt_onnx / "unet.onnx"))
    samples = load_calibration(small_calibration[0], "calibration")
    cores = attention_cores(standard.graph)
    shapes = probe_shapes(standard, [c.q for c in cores], samples[0], work / "probe.onnx")
    model = onnx.ModelProto()
    model.CopyFrom(standard)
    fuse_attention(model, cores, {c.bmm1: shapes[c.q][1] for c in cores})
    onnx.save(model, str(work / "fused.onnx"))
    return standard, work / "fused.onnx", cores, samples


def test_every_core_is_one_fused_node_and_names_survive(fused):
    standard, path, cores, _ = fused
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert len(cores) == sum(n.op_type == "Softmax" for n in standard.graph.node) >= 8
    assert ops.count("MultiHeadAttention") == len(cores) and "Softmax" not in ops
    dropped = {t for c in cores for t in c.dropped}
    before = {o for n in standard.graph.node for o in n.output}
    after = {o for n in graph.node for o in n.output}
    assert before - after == dropped  # every other tensor keeps its name


def test_fused_graph_computes_the_same_unet(fused, small_engines):
    standard, path, _, samples = fused
    feed = samples[0]
    (ours,) = _run(path, feed)
    (ref,) = _run(_saved(standard, path.with_name("standard.onnx")), feed)
    (ort_export,) = _run(small_engines[0] / "unet.onnx", feed)
    scale = np.abs(ref).max()
    # The ONNX Runtime export fuses the same attention at export time: same kernels, only
    # where q and k get their 1/sqrt(d) differs (rounding ~1e-7 of the scale).
    assert np.abs(ours - ort_export).max() <= 1e-5 * scale
    # ONNX Runtime's fused CPU attention vs MatMul/Softmax/MatMul in fp32: measured 5.7e-4
    # of the output scale on this model (its kernel accumulates in another order); a wrong
    # head count or layout is O(1).
    assert np.abs(ours - ref).max() <= 2e-3 * scale


def test_measured_ranges_are_max_abs_of_the_tensors(fused):
    standard, path, cores, samples = fused
    floats = float_activations(standard)
    dropped = {t for c in cores for t in c.dropped}
    names = [n for n in floats if n not in dropped]
    samples = samples[:2]  # enough for a max over samples
    stats = measure(onnx.load(str(path)), names, samples, path.with_name("stats.onnx"))
    assert stats.samples == 2 and set(stats.amax) == set(names)
    picked = ["/conv_in/Conv_output_0", cores[0].q, cores[0].v, cores[0].out]
    runs = [dict(zip(picked, _run(_outputs(path, picked), s, picked)), sample=s["sample"]) for s in samples]
    for name in ["sample", *picked]:
        expected = max(float(np.abs(r[name]).max()) for r in runs)
        # The same kernels computed the same tensor; only the reduction differs from numpy's.
        assert stats.amax[name] == pytest.approx(expected, rel=1e-6), name
        assert stats.shapes[name] == runs[0][name].shape


def test_softmax_outside_attention_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], "sm")], "g", [x], [y])
    with pytest.raises(AttentionPatternError, match="not MatMul -> Softmax -> MatMul"):
        attention_cores(graph)


def _saved(model: onnx.ModelProto, path):
    onnx.save(model, str(path))
    return path


def _outputs(path, names):
    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return _saved(model, path.with_name("outputs.onnx"))


# A fresh interpreter per run: ru_maxrss only ever grows within a process.
_PEAK = """
import resource, sys, numpy as np, onnx, onnxruntime as ort
from pathlib import Path
from svd_trt.calibration.tensor_ranges import float_activations, measure
path, mode = Path(sys.argv[1]), sys.argv[2]
model = onnx.load(str(path))
rng = np.random.default_rng(0)
feed = {
    "sample": rng.standard_normal((2, 8, 8, 32, 32), np.float32),
    "timestep": np.zeros(2, np.float32),
    "encoder_hidden_states": rng.standard_normal((2, 1, 64), np.float32),
    "added_time_ids": np.array([[6, 127, 0.02]] * 2, np.float32),
}
names = [n for n in float_activations(model) if n != "noise_pred"] if mode == "measure" else []
session = None if names else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
measure(model, names, [feed], path.with_name("peak.onnx")) if names else session.run(None, feed)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_measuring_costs_about_the_plain_runs_memory(fused):
    """Every float tensor reduced in one run, at 8 frames of 256x256: no activation is kept."""
    _, path, _, _ = fused

    def growth(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(path), mode], check=True, capture_output=True)
        return int(out.stdout.split()[-1])

    plain, measured = growth("plain"), growth("measure")
    # Measured: plain +32 MB, measuring +50 MB; with ONNX Runtime's default execution order
    # (reductions run late, activations kept) +2.2 GB.
    assert measured < 3 * plain + 100e6, (plain, measured)
