"""INT8 QDQ UNet: built from recorded data, runs in ONNX Runtime, sensitive layers left float."""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx
import pytest

from svd_trt.calibration.dataset import load_calibration
from svd_trt.calibration.quantize import (
    EXCLUDE_GROUPS,
    QuantizeError,
    excluded_nodes,
    exclusion_patterns,
    quantize_unet,
)
from svd_trt.families.svd.pipeline import SVDPipeline
from svd_trt.manifest import load_manifest
from svd_trt.runtime.runners import OrtRunner


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output}


def test_int8_unet_has_qdq_and_runs(small_int8, small_calibration):
    out, path = small_int8
    assert path == out / "unet.int8.onnx"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    sample = load_calibration(small_calibration[0], "held_out")[0]
    (pred,) = OrtRunner(path, threads=2).run(sample).values()
    assert pred.shape == sample["sample"].shape[:2] + (4,) + sample["sample"].shape[3:]
    assert np.isfinite(pred).all()


def test_activations_and_weights_are_symmetric_int8(small_int8):
    graph = onnx.load(str(small_int8[1])).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [init[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    # TensorRT's explicit INT8 takes int8 with zero point 0 only.
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_manifest_selects_int8_and_keeps_float(small_int8, small_engines, small_calibration):
    out, path = small_int8
    manifest = load_manifest(out)
    unet, float_unet = manifest.components["unet"], manifest.components["unet_float"]
    assert (unet.file, unet.precision) == ("unet.int8.onnx", "int8")
    assert float_unet == small_engines[1].components["unet"]
    assert unet.extra["quantization"]["method"] == "minmax"
    sample = load_calibration(small_calibration[0], "held_out")[0]
    (ours,) = SVDPipeline.from_engine_dir(out, threads=2).runners["unet"].run(sample).values()
    (int8,) = OrtRunner(path, threads=2).run(sample).values()
    (fp32,) = OrtRunner(out / float_unet.file, threads=2).run(sample).values()
    np.testing.assert_array_equal(ours, int8)  # the pipeline runs the int8 file
    assert not np.array_equal(ours, fp32)
    # The source directory is untouched.
    assert "unet_float" not in load_manifest(small_engines[0]).components


def test_excluded_nodes_are_not_quantized(small_int8, small_engines):
    float_model = onnx.load(str(small_engines[0] / "unet.onnx"))
    excluded = excluded_nodes(float_model, EXCLUDE_GROUPS)
    assert any("/time_embedding/" in n for n in excluded) and "/conv_in/Conv" in excluded
    graph = onnx.load(str(small_int8[1])).graph
    producer = _producers(graph)
    by_name = {n.name: n for n in graph.node}
    for name in excluded:
        fed = [producer[i].op_type for i in by_name[name].input if i in producer]
        assert "DequantizeLinear" not in fed, name
    # ...while an ordinary conv is.
    conv = by_name["/down_blocks.0/resnets.0/spatial_res_block/conv1/Conv"]
    assert {producer[i].op_type for i in conv.input[:2]} == {"DequantizeLinear"}


def test_softmax_patterns_cover_the_attention_matmuls(small_snapshot, tmp_path):
    """The name patterns pick exactly the MatMuls next to a Softmax (checked on the graph).

    On the standard-op export TensorRT builds from; ONNX Runtime's has one fused attention
    node per attention instead, which the quantizer never touches."""
    from svd_trt.export.onnx_export import build_onnx_dir

    build_onnx_dir(small_snapshot, tmp_path, "tensorrt", {"unet": "fp32"})
    graph = onnx.load(str(tmp_path / "unet.onnx")).graph
    producer = _producers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def upstream_matmul(name: str, hops: int = 3):
        node = producer.get(name)
        while node is not None and hops:
            if node.op_type == "MatMul":
                return node.name
            node, hops = producer.get(node.input[0]), hops - 1
        return None

    near = set()
    for sm in (n for n in graph.node if n.op_type == "Softmax"):
        near.add(upstream_matmul(sm.input[0]))
        near |= {c.name for c in consumers[sm.output[0]] if c.op_type == "MatMul"}
    patterns = exclusion_patterns(["attention_softmax"])
    matched = {
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and any(fnmatch.fnmatchcase(n.name, p) for p in patterns)
    }
    assert len(near) >= 8 and None not in near and near == matched
    names = [n.name for n in graph.node]
    for group in EXCLUDE_GROUPS:
        for pattern in exclusion_patterns([group]):
            assert any(fnmatch.fnmatchcase(n, pattern) for n in names), f"{group}: {pattern} matches nothing"


def test_fp8_is_refused_with_one_line(small_engines, small_calibration):
    with pytest.raises(QuantizeError, match="^fp8 needs TensorRT on a GPU of compute capability >= 8.9"):
        quantize_unet(small_engines[0], small_calibration[0], precision="fp8")
