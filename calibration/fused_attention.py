"""The standard-op attention of a TensorRT export, rewritten as ONNX Runtime's fused attention.

A TensorRT export writes each attention core as MatMul -> Softmax -> MatMul: q [N, h, L, d]
times k^T [N, h, d, S] gives scores [N, h, L, S], softmax, times v [N, h, S, d]. ONNX Runtime
runs that literally; at SVD-XT's first UNet level (N = 2 x 25 frames, h = 5, L = S = 9216)
one score tensor is 85 GB. `fuse_attention` replaces each core by one
com.microsoft::MultiHeadAttention node (its CPU kernel never materialises the scores) and
keeps every other tensor under its name, the core's own inputs and output included, so
whatever is measured on the fused graph is the standard graph's measurement. The only
tensors it drops are the scores and the softmax output of each core (`Core.dropped`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class AttentionPatternError(ValueError):
    """An attention core that is not MatMul -> Softmax(last axis) -> MatMul; one line."""


@dataclasses.dataclass(frozen=True)
class Core:
    """One attention core of the standard graph, by its three nodes' names and tensors."""

    bmm1: str  # q @ k^T
    softmax: str
    bmm2: str  # probs @ v
    q: str  # [N, h, L, d], already scaled as the graph scales it
    k_t: str  # [N, h, d, S]
    v: str  # [N, h, S, d]
    scores: str  # bmm1's output, [N, h, L, S]
    probs: str  # softmax's output, [N, h, L, S]
    out: str  # bmm2's output, [N, h, L, d]

    @property
    def dropped(self) -> tuple[str, str]:
        """The tensors the fused graph does not have."""
        return self.scores, self.probs


def attention_cores(graph: onnx.GraphProto) -> list[Core]:
    """Every Softmax between two MatMuls: the standard graph's attention cores."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    cores = []
    for sm in (n for n in graph.node if n.op_type == "Softmax"):
        bmm1 = producer.get(sm.input[0])
        users = consumers[sm.output[0]]
        if bmm1 is None or bmm1.op_type != "MatMul" or len(users) != 1 or users[0].op_type != "MatMul":
            raise AttentionPatternError(f"{sm.name}: not MatMul -> Softmax -> MatMul")
        bmm2 = users[0]
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        if bmm2.input[0] != sm.output[0] or len(consumers[bmm1.output[0]]) != 1 or axis not in (-1, 3):
            raise AttentionPatternError(f"{sm.name}: scores or probabilities used elsewhere, or axis {axis}")
        cores.append(
            Core(
                bmm1.name, sm.name, bmm2.name, bmm1.input[0], bmm1.input[1], bmm2.input[1],
                bmm1.output[0], sm.output[0], bmm2.output[0],
            )
        )  # fmt: skip
    return cores


def fuse_attention(model: onnx.ModelProto, cores: list[Core], heads: dict[str, int]) -> onnx.ModelProto:
    """`model` (modified in place) with each core replaced by MultiHeadAttention.

    MultiHeadAttention takes q, k, v as [N, L, h*d] and applies its own scale, so the graph's
    already-scaled q and k^T are laid out back to [N, L, h*d] and the scale is 1; its output
    is laid out as bmm2's [N, h, L, d] under bmm2's output name. `heads`: core.bmm1 -> h.
    """
    graph = model.graph
    by_bmm2 = {c.bmm2: c for c in cores}
    gone = {c.bmm1 for c in cores} | {c.softmax for c in cores}
    flat = _const(graph, "fused_attention/flat", [0, 0, -1])
    nodes = []
    for n in graph.node:
        if n.name in gone:
            continue
        core = by_bmm2.get(n.name)
        nodes += [n] if core is None else _fused(graph, core, heads[core.bmm1], flat)
    del graph.node[:]
    graph.node.extend(nodes)
    if MS_DOMAIN not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _fused(graph: onnx.GraphProto, c: Core, heads: int, flat: str) -> list[onnx.NodeProto]:
    p = c.bmm2 + "/fused"
    split = _const(graph, p + "/split_shape", [0, 0, heads, -1])

    def to_3d(name: str, perm: list[int], tag: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Transpose", [name], [f"{p}/{tag}_t"], f"{p}/{tag}_t", perm=perm),
            helper.make_node("Reshape", [f"{p}/{tag}_t", flat], [f"{p}/{tag}3"], f"{p}/{tag}3"),
        ]

    return [
        *to_3d(c.q, [0, 2, 1, 3], "q"),
        *to_3d(c.k_t, [0, 3, 1, 2], "k"),
        *to_3d(c.v, [0, 2, 1, 3], "v"),
        helper.make_node(
            "MultiHeadAttention",
            [f"{p}/q3", f"{p}/k3", f"{p}/v3"],
            [f"{p}/o3"],
            f"{p}/mha",
            domain=MS_DOMAIN,
            num_heads=heads,
            scale=1.0,  # q and k^T arrive scaled by the graph's own d^-1/4 each
        ),
        helper.make_node("Reshape", [f"{p}/o3", split], [f"{p}/o4"], f"{p}/o4"),
        helper.make_node("Transpose", [f"{p}/o4"], [c.out], f"{p}/out", perm=[0, 2, 1, 3]),
    ]


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name
