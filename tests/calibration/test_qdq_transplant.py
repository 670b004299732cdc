"""calibration/qdq_transplant.py on hand-made graphs: a quantized fp32 graph's Q/DQ carried onto
its fp16 twin, whose fp32 island (a Softmax between Casts) and types are kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from svd_trt.calibration.qdq_transplant import TransplantError, fp16_fraction, transplant_qdq

FP16, FP32 = TensorProto.FLOAT16, TensorProto.FLOAT
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
W_SCALE = (np.abs(W).max(axis=0) / 127).astype(np.float32)  # per output channel
W_Q = np.round(W / W_SCALE).astype(np.int8)
X_SCALE = np.float32(3.0 / 127)


def _model(nodes, inits, x_type, y_type) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, [2, 8])],
        [helper.make_tensor_value_info("y", y_type, [2, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def quantized_fp32() -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(DQ(int8 W)) -> Softmax -> y, all fp32 (Model Optimizer's output form)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zp"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="w_DQ", axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["h"], name="/proj/MatMul"),
        helper.make_node("Softmax", ["h"], ["y"], name="/Softmax", axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array(X_SCALE), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(W_Q, "w_q"),
        numpy_helper.from_array(W_SCALE, "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    return _model(nodes, inits, FP32, FP32)


def fp16_twin(matmul: str = "/proj/MatMul") -> onnx.ModelProto:
    """The same trace in fp16 with the softmax as an fp32 island, as the fp16 export writes it."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name=matmul),
        helper.make_node("Cast", ["h"], ["h32"], name="/Cast", to=FP32),
        helper.make_node("Softmax", ["h32"], ["p"], name="/Softmax", axis=-1),
        helper.make_node("Cast", ["p"], ["y"], name="/Cast_1", to=FP16),
    ]
    return _model(nodes, [numpy_helper.from_array(W.astype(np.float16), "w")], FP16, FP16)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_qdq_lands_on_the_twin_with_its_types_and_fp32_edges():
    model = fp16_twin()
    done = transplant_qdq(quantized_fp32(), model)
    onnx.checker.check_model(model, full_check=True)
    assert (done.weights, done.activations, done.subnormal_scales) == (1, 1, 0)
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    assert [producer[i].op_type for i in by_name["/proj/MatMul"].input] == ["DequantizeLinear"] * 2
    inits = {t.name: t for t in graph.initializer}
    # the scales take the fp16 remainder's type; the weight stays int8; the fp16 weight is gone
    assert inits["x_scale"].data_type == FP16 and inits["w_scale"].data_type == FP16
    assert inits["w_q"].data_type == TensorProto.INT8 and "w" not in inits
    # the island is untouched; the graph's edges are fp32 like the float UNet's
    assert by_name["/Softmax"].input == ["h32"] and fp16_fraction(model) == (1, 1)
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [FP32, FP32]

    x = RNG.uniform(-3, 3, (2, 8)).astype(np.float32)
    # numpy: the quantized MatMul in fp16 (ONNX Runtime's CPU kernel accumulates in fp32), fp32 softmax
    xq = (
        np.clip(np.round(x.astype(np.float16) / np.float16(X_SCALE)), -128, 127) * np.float16(X_SCALE)
    ).astype(np.float32)
    h = (xq @ (W_Q * W_SCALE.astype(np.float16)).astype(np.float32)).astype(np.float16).astype(np.float32)
    e = np.exp(h - h.max(-1, keepdims=True))
    expected = (e / e.sum(-1, keepdims=True)).astype(np.float16).astype(np.float32)
    ours = _run(model, x)
    assert ours.dtype == np.float32
    # Both round h and y to fp16 (2^-11 relative); only the summation order of 8 products differs,
    # which moves h by a few fp32 ulps and, across an fp16 rounding boundary, y by one fp16 ulp (2^-11).
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2.0**-10)


def test_a_scale_inside_an_fp32_island_stays_fp32():
    """When the quantized node reads an fp32 tensor in the fp16 export, its scales are fp32 copies."""
    model = fp16_twin()
    by_name = {n.name: n for n in model.graph.node}
    by_name["/proj/MatMul"].input[0] = "x32"  # the MatMul in an island: reads x cast to fp32
    by_name["/proj/MatMul"].output[0] = "h32"
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(W, "w"))
    model.graph.node.remove(by_name["/Cast"])
    model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x32"], name="/Cast", to=FP32))
    transplant_qdq(quantized_fp32(), model)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert inits["x_scale::fp32"] == FP32 and inits["w_scale::fp32"] == FP32
    onnx.checker.check_model(model, full_check=True)
    assert np.isfinite(_run(model, np.ones((2, 8), np.float32))).all()


def test_a_node_without_its_twin_is_refused():
    with pytest.raises(TransplantError, match=r"^/proj/MatMul: no MatMul of that name in the fp16 export$"):
        transplant_qdq(quantized_fp32(), fp16_twin(matmul="/other/MatMul"))
