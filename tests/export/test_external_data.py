"""Graphs past 2 GB: the exporter's scattered external tensors are gathered into one page-aligned
`<name>.onnx.data` by streaming, and the result loads and runs as the original."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from svd_trt.export.onnx_export import gather_external_data
from svd_trt.runtime.runners import OrtRunner


def test_scattered_tensors_are_gathered_into_one_aligned_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal((48, 8)).astype(np.float32)
    shift = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(shift, "c")),
            helper.make_node("MatMul", ["h", "w2"], ["y0"]),
            helper.make_node("Add", ["y0", "c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    # one file per tensor, as the legacy exporter writes a model past protobuf's 2 GB
    onnx.save_model(
        model,
        str(raw_dir / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    assert len(list(raw_dir.iterdir())) > 2
    out = tmp_path / "out"
    out.mkdir()
    gather_external_data(raw_dir / "m.onnx", out / "m.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx", "m.onnx.data"]
    stored = onnx.load(str(out / "m.onnx"), load_external_data=False)
    entries = [{e.key: e.value for e in t.external_data} for t in stored.graph.initializer]
    assert all(e["location"] == "m.onnx.data" and int(e["offset"]) % 4096 == 0 for e in entries)
    onnx.checker.check_model(str(out / "m.onnx"))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    # the same weights in the same graph: the same numbers, bit for bit
    got = OrtRunner(out / "m.onnx").run({"x": x})["y"]
    np.testing.assert_array_equal(got, OrtRunner(raw_dir / "m.onnx").run({"x": x})["y"])
