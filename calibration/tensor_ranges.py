"""Ranges and shapes of a graph's float tensors over recorded inputs, in one ONNX Runtime pass each.

`measure` adds, right after each tensor's producer, ReduceMin, ReduceMax and Shape of it as
extra graph outputs: scalars and shape vectors. Run in that order (ONNX Runtime's
priority-based execution order), no activation lives beyond its last real use and the
memory stays the plain graph's. max(|min|, |max|) over all samples
is the `max` calibration of symmetric quantizers (ONNX Runtime's MinMax with symmetric
ranges, Model Optimizer's "max").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import helper

log = logging.getLogger(__name__)

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclasses.dataclass
class TensorStats:
    """Per tensor name: max |x| over the samples, and the shape in the first sample."""

    amax: dict[str, float] = dataclasses.field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    samples: int = 0


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Names of the float tensors computed by the graph (inputs and node outputs, not weights)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.output})
    names = [i.name for i in model.graph.input]
    names += [o for n in model.graph.node if n.op_type != "Constant" for o in n.output]
    return [n for n in names if types.get(n) in _FLOATS]


def probe_shapes(model: onnx.ModelProto, names: Iterable[str], feed: dict, path: Path) -> dict:
    """Shapes of `names` in one run of `model` on `feed` (saved to `path` for ONNX Runtime)."""
    names = list(names)
    outputs = _with_outputs(model, [(n, []) for n in names])
    values = _session(outputs, path).run(names, feed)
    return {n: tuple(v.shape) for n, v in zip(names, values)}


def measure(model: onnx.ModelProto, names: Iterable[str], samples: Iterable[dict], path: Path) -> TensorStats:
    """max |x| and first shape of every tensor in `names` over `samples` (saved to `path` first)."""
    names = list(names)
    probes = [(n, [("ReduceMin", "min"), ("ReduceMax", "max"), ("Shape", "shape")]) for n in names]
    session = _session(_with_outputs(model, probes), path)
    wanted = [f"{n}::{tag}" for n in names for tag in ("min", "max", "shape")]
    stats = TensorStats()
    for feed in samples:
        values = dict(zip(wanted, session.run(wanted, feed)))
        for n in names:
            a = max(abs(float(values[f"{n}::min"])), abs(float(values[f"{n}::max"])))
            stats.amax[n] = max(stats.amax.get(n, 0.0), a)
            stats.shapes.setdefault(n, tuple(int(d) for d in values[f"{n}::shape"]))
        stats.samples += 1
        log.info("calibration sample %d: %d tensors", stats.samples, len(names))
    return stats


def _with_outputs(model: onnx.ModelProto, probes: list[tuple[str, list[tuple[str, str]]]]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs each named tensor, or ops of it, placed right
    after the tensor's producer so the schedule keeps activations no longer than before."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # weights stay external references when loaded without their data
    graph = out.graph
    extra: dict[str, list[onnx.NodeProto]] = {}
    outputs = []
    for name, ops in probes:
        nodes = [
            helper.make_node(op, [name], [f"{name}::{tag}"], f"{name}::{tag}", **_reduce_all(op))
            for op, tag in ops
        ]
        extra[name] = nodes
        outputs += [helper.make_empty_tensor_value_info(n.output[0]) for n in nodes] or [
            helper.make_empty_tensor_value_info(name)
        ]
    nodes = [n for i in (inp.name for inp in graph.input) for n in extra.get(i, [])]
    for n in graph.node:
        nodes.append(n)
        nodes += [e for o in n.output for e in extra.get(o, [])]
    del graph.node[:]
    graph.node.extend(nodes)
    known = {o.name for o in graph.output}
    graph.output.extend(o for o in outputs if o.name not in known)
    return out


def _reduce_all(op: str) -> dict:
    return {"keepdims": 0} if op.startswith("Reduce") else {}


def _session(model: onnx.ModelProto, path: Path):
    """An ONNX Runtime session on `model` (written to `path` so external weights resolve).

    CUDA when this ONNX Runtime has it (the onnxruntime-gpu wheel): a full-size SVD-XT call
    is ~160 TFLOP, minutes on a CPU. The fused attention runs on both."""
    import onnxruntime as ort

    providers = [p for p in PROVIDERS if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    # The default order runs the added reductions late, keeping every activation alive until
    # then (11x the plain graph's peak on the small model); this one runs each right after
    # its tensor's producer (measured: 1.2x, tests/calibration/test_fused_attention.py).
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    onnx.save_model(model, str(path))
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    finally:
        path.unlink()
