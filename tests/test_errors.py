"""The error taxonomy (svd_trt/errors.py) with the real exception classes of the backends."""

from __future__ import annotations

import numpy as np
import pytest

from svd_trt.errors import (
    BUG,
    CAPACITY,
    ENGINE,
    GRPC_STATUS,
    HTTP_STATUS,
    KINDS,
    REQUEST,
    CapacityError,
    EngineError,
    UserError,
    engine_failure,
    kind_of,
    one_line,
)

ort = pytest.importorskip("onnxruntime")
state = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")


@pytest.fixture(scope="module")
def add_one(tmp_path_factory):
    """A real ONNX Runtime session: y = x + 1 for x of shape [2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "one")],
    )
    path = tmp_path_factory.mktemp("onnx") / "add_one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_an_ort_failure_is_an_engine_error_naming_the_component(add_one):
    with pytest.raises(Exception) as raised:
        add_one.run(None, {"x": np.zeros(3, np.float32)})  # the wrong shape
    error = raised.value
    assert type(error) is state.InvalidArgument
    assert not isinstance(error, RuntimeError)  # why catching RuntimeError missed every ORT failure
    failure = engine_failure(error, component="unet")
    assert isinstance(failure, EngineError) and failure.__class__ is EngineError
    assert str(failure).startswith(
        "the engines cannot run this request: unet: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions"
    )
    assert "\n" not in str(failure)
    assert kind_of(error) == ENGINE
    # Outside a component's run it is still ONNX Runtime's failure, named by its package.
    assert str(engine_failure(error)).startswith("onnxruntime: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT")


@pytest.mark.parametrize("name", ["Fail", "RuntimeException", "InvalidArgument", "EPFail", "NotImplemented"])
def test_every_ort_exception_class_is_recognized(name):
    error = getattr(state, name)("[ONNXRuntimeError] : 1 : FAIL : something broke\nmore detail")
    assert kind_of(error) == ENGINE
    assert one_line(error) == "onnxruntime: [ONNXRuntimeError] : 1 : FAIL : something broke"


def test_out_of_memory_is_capacity():
    error = state.RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 123"
    )
    failure = engine_failure(error, component="vae_decoder")
    assert isinstance(failure, CapacityError) and not isinstance(failure, EngineError)
    assert str(failure).startswith("out of memory: vae_decoder: [ONNXRuntimeError]")
    assert kind_of(MemoryError("Unable to allocate 95.6 GiB")) == BUG  # outside a run: a bug
    assert isinstance(engine_failure(MemoryError("Unable to allocate"), component="unet"), CapacityError)


def test_runtime_errors_are_the_engines_only_inside_a_run():
    assert engine_failure(RuntimeError("CUDA error: an illegal memory access")) is None
    assert kind_of(RuntimeError("x")) == BUG
    failure = engine_failure(RuntimeError(), component="unet")
    assert str(failure) == "the engines cannot run this request: unet: RuntimeError"  # no message: its type


def test_kinds_statuses_and_one_lines():
    assert kind_of(UserError("bad")) == REQUEST
    assert kind_of(CapacityError("full")) == CAPACITY
    assert kind_of(EngineError("broke")) == ENGINE
    assert kind_of(KeyError("x")) == BUG
    assert {k: (HTTP_STATUS[k], GRPC_STATUS[k]) for k in KINDS} == {
        REQUEST: (400, "INVALID_ARGUMENT"),
        CAPACITY: (503, "UNAVAILABLE"),
        ENGINE: (500, "INTERNAL"),
        BUG: (500, "INTERNAL"),
    }
    assert one_line(ValueError("a\nb")) == "internal error: ValueError: a"
    error = UserError("first\nsecond")
    assert engine_failure(error) is error and one_line(error) == "first"
