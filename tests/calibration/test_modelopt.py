"""INT8 / FP8 Q/DQ UNets placed by NVIDIA Model Optimizer on the TensorRT export of the small model."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from svd_trt.calibration.dataset import load_calibration
from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt
from svd_trt.calibration.quantize import QuantizeError
from svd_trt.manifest import load_manifest
from svd_trt.runtime.runners import OrtRunner

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt is not installed (pip install 'svd-trt[modelopt]')",
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quantized(src, calib, tmp_path_factory, precision):
    """A copy of the TensorRT ONNX directory with its UNet quantized; the source's hash before."""
    out = tmp_path_factory.mktemp("modelopt") / f"small-{precision}"
    shutil.copytree(src, out)
    before = _sha(out / "unet.onnx")
    path = quantize_unet_modelopt(out, calib, precision)
    return out, path, before


@pytest.fixture(scope="module")
def int8(small_trt_onnx, small_calibration, tmp_path_factory):
    return _quantized(small_trt_onnx, small_calibration[0], tmp_path_factory, "int8")


@pytest.fixture(scope="module")
def fp8(small_trt_onnx, small_calibration, tmp_path_factory):
    return _quantized(small_trt_onnx, small_calibration[0], tmp_path_factory, "fp8")


def _graph(path) -> onnx.GraphProto:
    return onnx.load(str(path)).graph


def _activation_scales(graph: onnx.GraphProto) -> dict[str, float]:
    init = {t.name: t for t in graph.initializer}
    return {
        n.input[1]: float(numpy_helper.to_array(init[n.input[1]]))
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in init
    }


def _fed_by_dq(graph: onnx.GraphProto) -> set[str]:
    """Names of the Conv / MatMul / Gemm nodes with a DequantizeLinear on an input."""
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and dq & set(n.input)}


@needs_modelopt
def test_int8_qdq_sits_on_the_gemms_and_runs_on_the_cpu(int8, small_calibration):
    out, path, _ = int8
    model = onnx.load(str(path))
    graph = model.graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # no contrib ops: TensorRT parses it
    assert {(o.domain or "ai.onnx", o.version) for o in model.opset_import} == {("ai.onnx", 19)}
    quantized = _fed_by_dq(graph)
    by_name = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    # An ordinary conv and an attention projection: both inputs dequantized (activation, weight).
    for name in (
        "/down_blocks.0/resnets.0/spatial_res_block/conv1/Conv",
        "/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul",
    ):
        assert name in quantized
        assert [producer[i].op_type for i in by_name[name].input[:2]] == ["DequantizeLinear"] * 2
    init = {t.name: t for t in graph.initializer}
    weights = [init[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert len(weights) > 50 and {w.data_type for w in weights} == {onnx.TensorProto.INT8}  # stored int8
    sample = load_calibration(small_calibration[0], "held_out")[0]
    (pred,) = OrtRunner(path, threads=2).run(sample).values()
    assert pred.shape == (*sample["sample"].shape[:2], 4, *sample["sample"].shape[3:])
    assert np.isfinite(pred).all()


@needs_modelopt
def test_directory_keeps_the_float_unet_and_its_input(int8, small_trt_onnx):
    out, path, before = int8
    manifest = load_manifest(out)
    unet, float_unet = manifest.components["unet"], manifest.components["unet_float"]
    assert (unet.file, unet.precision) == ("unet.int8.onnx", "int8")
    assert float_unet == load_manifest(small_trt_onnx).components["unet"]
    assert unet.extra["quantization"]["tool"].startswith("nvidia-modelopt")
    assert _sha(out / "unet.onnx") == before  # Model Optimizer worked on a copy
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # its work dir is gone


@needs_modelopt
def test_int8_scores_like_the_onnx_runtime_int8(int8, small_snapshot, small_calibration):
    """`svd-export check`'s quantized section on the TensorRT ONNX directory, in ONNX Runtime."""
    from svd_trt.engines.accuracy import QUANT_MIN_PSNR, CheckOptions, check_quantized

    out, _, _ = int8
    section = check_quantized(
        CheckOptions(out, small_snapshot, calibration=small_calibration[0]), "onnxruntime"
    )
    # QUANT_MIN_PSNR (20 dB) is the check's own bound: the int8 video follows the float one.
    assert section["passed"] and section["worst_psnr_db"] >= QUANT_MIN_PSNR
    # Per call on held-out inputs: measured rel RMS 0.16 and 28.8 dB here (ONNX Runtime's
    # quantizer on the same directory: 0.15, 27.9 dB); 0.3 leaves room for other kernels'
    # rounding, a broken scale is O(1).
    assert section["unet_steps"]["overall"]["rel_rms"] < 0.3


@needs_modelopt
def test_same_result_as_modelopt_calibrating_the_standard_graph(
    int8, small_trt_onnx, small_calibration, tmp_path
):
    """Where Model Optimizer's own run fits in memory (the small model), ours equals it."""
    src = tmp_path / "unet.onnx"
    shutil.copyfile(small_trt_onnx / "unet.onnx", src)
    # In another process: Model Optimizer patches ONNX Runtime's quantizer process-wide.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from modelopt.onnx.quantization import quantize
        from svd_trt.calibration.dataset import load_index, load_sample, select
        calib = Path({str(small_calibration[0])!r})
        entries = select(load_index(calib), "calibration")
        class Reader:
            def __init__(self): self.it = iter(entries)
            def get_next(self):
                e = next(self.it, None)
                return None if e is None else load_sample(calib, e)
            def get_first(self): return load_sample(calib, entries[0])
        quantize({str(src)!r}, quantize_mode="int8", calibration_data_reader=Reader(),
                 calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32",
                 dq_only=True, output_path={str(tmp_path / "direct.onnx")!r}, log_level="WARNING")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    ours, direct = _graph(int8[1]), _graph(tmp_path / "direct.onnx")
    assert _fed_by_dq(ours) == _fed_by_dq(direct)
    a, b = _activation_scales(ours), _activation_scales(direct)
    assert set(a) == set(b) and len(a) > 100
    # Same data, same max |x|, except downstream of attention, where the fused kernel's
    # rounding moves a tensor's max by up to 7.2e-4 (measured); a wrong range is >> 1e-2.
    worst = max(abs(a[k] - b[k]) / b[k] for k in a)
    assert worst < 2e-3


@needs_modelopt
def test_fp8_is_written_with_fp8_types_and_runs(fp8, int8, small_calibration):
    out, path, before = fp8
    graph = _graph(path)
    init = {t.name: t for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = {init[n.input[2]].data_type for n in qdq}
    assert len(qdq) > 100 and zero_points == {onnx.TensorProto.FLOAT8E4M3FN}
    weights = {init[n.input[0]].data_type for n in qdq if n.input[0] in init}
    assert weights == {onnx.TensorProto.FLOAT8E4M3FN}
    assert load_manifest(out).components["unet"].precision == "fp8"
    assert _sha(out / "unet.onnx") == before
    # Model Optimizer's FP8 scale is its INT8 scale x 448/127 (amax / 127 x 448 / 127).
    a, b = _activation_scales(graph), _activation_scales(_graph(int8[1]))
    shared = set(a) & set(b)
    assert len(shared) > 100
    assert max(abs(a[k] / (b[k] * 448 / 127) - 1) for k in shared) < 1e-6
    # ONNX Runtime 1.2x runs FP8 Q/DQ on the CPU (emulated; no FP8 kernels): it loads and runs.
    sample = load_calibration(small_calibration[0], "held_out")[0]
    (pred,) = OrtRunner(path, threads=2).run(sample).values()
    assert np.isfinite(pred).all()


def test_unknown_precision_is_one_line(small_trt_onnx, small_calibration):
    with pytest.raises(QuantizeError, match="^unknown precision 'int4': choose int8 or fp8$"):
        quantize_unet_modelopt(small_trt_onnx, small_calibration[0], "int4")
