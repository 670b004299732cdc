"""Model Optimizer's Q/DQ, carried from the fp32 UNet it quantized onto the fp16 TensorRT export.

TensorRT builds strongly typed: every tensor has the type the graph gives it. Model Optimizer
quantizes (and calibrates) the fp32 export, so its output runs everything it does not quantize
in fp32 - norms, softmax, GEGLU, residual adds, the attention BMMs it leaves alone. Its own
fp16 conversion (`high_precision_dtype="fp16"`) would pick its own fp32 islands by op type.
Instead, each DequantizeLinear that feeds a node of the quantized graph is re-created in the
fp16 export in front of the node of the same name, on the same input slot: both graphs are
traces of the same port, so every node other than Cast and Constant has the same name in both
(checked here: a consumer without its twin is an error). Everything else, the fp32 islands
(normalisation statistics, softmax, the time embeddings) included, is the fp16 export itself.

A scale takes the type of the tensor it (de)quantizes there: fp16 in the fp16 remainder,
fp32 inside an island. Graph inputs and outputs stay fp32, as the float UNet the manifest
records beside it (a Cast at each edge), so both files take the same feeds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}
# The smallest normal fp16: a scale below it keeps fewer than fp16's 11 significant bits.
FP16_TINY = float(np.finfo(np.float16).tiny)


class TransplantError(ValueError):
    """The quantized graph and the fp16 export are not traces of the same model."""


@dataclass(frozen=True)
class Transplanted:
    """What was carried over."""

    weights: int  # weight DequantizeLinear nodes
    activations: int  # activation Quantize/Dequantize pairs
    subnormal_scales: int  # scales below fp16's smallest normal, in fp16 (fewer significant bits)


def transplant_qdq(quantized: onnx.ModelProto, fp16: onnx.ModelProto) -> Transplanted:
    """Rewrite `fp16` (in place, weights loaded) with every Q/DQ of `quantized` (weights loaded)."""
    types = tensor_types(fp16)
    ctx = _Context(fp16, types)
    producer = {o: n for n in quantized.graph.node for o in n.output}
    weights = {t.name: t for t in quantized.graph.initializer}
    twins = {n.name: n for n in fp16.graph.node}
    for node in quantized.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for slot, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            twin = twins.get(node.name)
            if twin is None or twin.op_type != node.op_type:
                raise TransplantError(
                    f"{node.name or node.op_type}: no {node.op_type} of that name in the fp16 export"
                )
            if dq.input[0] in weights:
                twin.input[slot] = ctx.weight(dq, twin.input[slot], weights)
            else:
                q = producer.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    raise TransplantError(
                        f"{dq.name}: dequantizes {dq.input[0]}, neither a weight nor a Q output"
                    )
                twin.input[slot] = ctx.activation(q, dq, twin.input[slot], weights)
    ctx.finish()
    return Transplanted(len(ctx.weight_dq), len(ctx.pairs), ctx.subnormal)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of `model` (ONNX type inference; weights need not be loaded)."""
    inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with data-less initializers (type inference reads only their types and shapes)."""
    light = onnx.ModelProto()
    initializers = list(model.graph.initializer)
    del model.graph.initializer[:]  # not copied: the real UNet's weights are GBs
    try:
        light.CopyFrom(model)
    finally:
        model.graph.initializer.extend(initializers)
    light.graph.initializer.extend(
        TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) for t in initializers
    )
    return light


class _Context:
    """The fp16 graph being rewritten, and what was added to it."""

    def __init__(self, model: onnx.ModelProto, types: dict[str, int]) -> None:
        self.model, self.types = model, types
        g = model.graph
        self.names = {o for n in g.node for o in n.output} | {t.name for t in (*g.initializer, *g.input)}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: dict[str, TensorProto] = {}
        self.copies: dict[tuple[str, int | None], str] = {}  # (initializer, float type) -> its copy
        self.weight_dq: dict[tuple[str, int], str] = {}
        self.pairs: dict[tuple[str, str], str] = {}
        self.subnormal = 0

    def fresh(self, name: str) -> str:
        """`name`, or `name::N` where the fp16 graph has it (the two exports number their weights apart)."""
        candidate, i = name, 0
        while candidate in self.names:
            i += 1
            candidate = f"{name}::{i}"
        self.names.add(candidate)
        return candidate

    def dtype_of(self, tensor: str) -> int:
        dtype = self.types.get(tensor)
        if dtype not in _FLOATS:
            raise TransplantError(f"{tensor}: not a float16 / float32 tensor in the fp16 export")
        return dtype

    def constant(self, source: TensorProto, dtype: int | None = None) -> str:
        """A copy of `source` (cast to float `dtype` if given) as an initializer, once per type; its name.

        An fp32 copy (a scale inside an fp32 island) is named `<name>::fp32`."""
        key = (source.name, dtype)
        if key not in self.copies:
            self.copies[key] = self._copy(source, dtype)
        return self.copies[key]

    def _copy(self, source: TensorProto, dtype: int | None) -> str:
        array = numpy_helper.to_array(source)
        if dtype is not None:
            cast = array.astype(_FLOATS[dtype])
            if dtype == TensorProto.FLOAT16:
                if not np.isfinite(cast).all() or (cast[array != 0] == 0).any():
                    raise TransplantError(
                        f"{source.name}: a scale fp16 cannot hold ({array.min()}..{array.max()})"
                    )
                self.subnormal += int((np.abs(array) < FP16_TINY).sum())
            array = cast
        name = self.fresh(source.name + ("::fp32" if dtype == TensorProto.FLOAT else ""))
        if dtype is None:  # int8 / fp8 data stays as stored (numpy has no fp8)
            copy = TensorProto()
            copy.CopyFrom(source)
            copy.name = name
        else:
            copy = numpy_helper.from_array(array, name)
        self.new_inits[name] = copy
        return name

    def weight(self, dq: onnx.NodeProto, replaced: str, weights: dict[str, TensorProto]) -> str:
        """A DequantizeLinear of the quantized weight, in the type the replaced weight had."""
        dtype = self.dtype_of(replaced)
        key = (dq.output[0], dtype)
        if key not in self.weight_dq:
            inputs = [self.constant(weights[dq.input[0]]), self.constant(weights[dq.input[1]], dtype)]
            inputs += [self.constant(weights[dq.input[2]])] if len(dq.input) > 2 and dq.input[2] else []
            self.weight_dq[key] = self._node("DequantizeLinear", inputs, dq)
        return self.weight_dq[key]

    def activation(
        self, q: onnx.NodeProto, dq: onnx.NodeProto, tensor: str, weights: dict[str, TensorProto]
    ) -> str:
        """Quantize then dequantize `tensor` of the fp16 graph with the pair's scale and zero point."""
        key = (tensor, q.input[1])
        if key not in self.pairs:
            dtype = self.dtype_of(tensor)
            scale = self.constant(weights[q.input[1]], dtype)
            zero = [self.constant(weights[q.input[2]])] if len(q.input) > 2 and q.input[2] else []
            quantized = self._node("QuantizeLinear", [tensor, scale, *zero], q)
            self.pairs[key] = self._node("DequantizeLinear", [quantized, scale, *zero], dq)
        return self.pairs[key]

    def _node(self, op: str, inputs: list[str], like: onnx.NodeProto) -> str:
        output = self.fresh(like.output[0])
        node = helper.make_node(op, inputs, [output], name=self.fresh(like.name or op))
        node.attribute.extend(a for a in like.attribute if a.name in ("axis", "saturate", "block_size"))
        self.new_nodes.append(node)
        return output

    def finish(self) -> None:
        """Add the new nodes and initializers, drop weights nothing reads any more, fp32 at the edges."""
        graph = self.model.graph
        graph.initializer.extend(self.new_inits.values())
        nodes = [*self.new_nodes, *graph.node]
        _drop_unread(graph, nodes)
        _fp32_edges(graph, nodes)
        del graph.node[:]
        graph.node.extend(
            _toposorted(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer})
        )


def _drop_unread(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    read = {i for n in nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _fp32_edges(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """fp16 graph inputs and outputs become fp32 with a Cast inside the graph."""
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            inner = f"{value.name}::fp16"
            for n in nodes:
                n.input[:] = [inner if i == value.name else i for i in n.input]
            nodes.insert(0, helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16))
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            inner = f"{value.name}::fp16"
            for n in nodes:
                n.output[:] = [inner if o == value.name else o for o in n.output]
                n.input[:] = [inner if i == value.name else i for i in n.input]
            nodes.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT))
            value.type.tensor_type.elem_type = TensorProto.FLOAT


def _toposorted(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Each node after the producers of its inputs, otherwise in the given order (Kahn's algorithm)."""
    waiting: dict[str, list[int]] = {}
    missing = []
    for i, n in enumerate(nodes):
        needs = {x for x in n.input if x and x not in available}
        missing.append(len(needs))
        for x in needs:
            waiting.setdefault(x, []).append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for out in nodes[i].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise TransplantError("the rewritten graph has a cycle or an input nothing produces")
    return order


def fp16_fraction(model: onnx.ModelProto, ops: tuple[str, ...] = QUANTIZED_OPS) -> tuple[int, int]:
    """(nodes of `ops` whose output is fp16, nodes of `ops`): how much of the compute is fp16."""
    types = tensor_types(model)
    nodes = [n for n in model.graph.node if n.op_type in ops]
    return sum(types.get(n.output[0]) == TensorProto.FLOAT16 for n in nodes), len(nodes)
