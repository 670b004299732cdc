"""`svd-export check --device cuda`: where ONNX Runtime runs the graphs under check."""

from __future__ import annotations

import onnxruntime
import pytest

from svd_trt.engines.accuracy import engine_options


@pytest.mark.parametrize(
    ("backend", "device", "providers", "expected"),
    [
        ("onnxruntime", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], {"device": "cuda"}),
        ("onnxruntime", "cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"], {"device": "cuda"}),
        # onnxruntime without its GPU build: the CPU, as before (logged)
        ("onnxruntime", "cuda", ["CPUExecutionProvider"], {}),
        ("onnxruntime", "cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], {}),
        # TensorRT engines pick their GPU themselves
        ("tensorrt", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], {}),
    ],
)
def test_onnx_graphs_follow_the_reference_onto_the_gpu(monkeypatch, backend, device, providers, expected):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    assert engine_options(backend, device) == expected
