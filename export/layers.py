"""Port layers every family shares: fp32 islands for fp16 exports, diffusers' timestep embedding, and
attention written into ONNX as standard ops (TensorRT) or ONNX Runtime's fused MultiHeadAttention.

Attribute names are diffusers' checkpoint keys, so state dicts load with strict=True.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- fp32 islands
# An fp16 ONNX graph carries its precision: TensorRT builds it strongly typed and ONNX Runtime runs
# it as written, so the places where fp16 is known to fail are explicit fp32 islands in the graph:
# normalisation statistics (a variance of thousands of elements, squares past 65504), softmax (a
# sum of up to 9,216 exponentials at SVD-XT's first level), and the time / conditioning embeddings
# (sinusoids of arguments up to ~1000, per-sample vectors: free). Only while exporting: eager torch
# already accumulates norms and softmax in fp32 for fp16 inputs, and its fp16 path stays diffusers'.


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`, recording no op when it already is: the tracer writes every .to() as a Cast,
    and ONNX Runtime 1.32's basic optimizer breaks the graph on a chain of identity Casts."""
    return x if x.dtype == dtype else x.to(dtype)


def fp32_island(x: torch.Tensor) -> bool:
    """True where `x` is fp16 inside an ONNX export: compute in fp32, cast the result back."""
    return x.dtype == torch.float16 and torch.onnx.is_in_onnx_export()


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same keys), an fp32 island in an fp16 export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fp32_island(x):
            return super().forward(x)
        w, b = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


# ----------------------------------------------------------------------------- embeddings


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] -> [N, dim]: cos | sin of t * 10000^(-k / half), diffusers' flip_sin_to_cos=True, shift 0.

    Always float32 (as diffusers): a timestep of ~1000 needs more than fp16's mantissa.
    """
    half = dim // 2
    # diffusers' get_timestep_embedding, operation for operation: the frequencies round as there
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """diffusers' `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: no weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2, in the input's dtype (fp32 for the export's embedding island)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.linear_1.weight.to(x.dtype), self.linear_1.bias.to(x.dtype))
        return F.linear(F.silu(h), self.linear_2.weight.to(x.dtype), self.linear_2.bias.to(x.dtype))


# ----------------------------------------------------------------------------- attention

# How attention is written into ONNX; set per export by `onnx_attention` (export/onnx_export.py).
_ONNX_ATTENTION = {"kind": "standard"}
ATTENTION_KINDS = ("standard", "contrib")


@contextlib.contextmanager
def onnx_attention(kind: str) -> Iterator[None]:
    """Export attention as `standard` ops or as ONNX Runtime's `contrib` MultiHeadAttention.

    standard: MatMul / Softmax / MatMul, which TensorRT fuses into its own attention kernels.
    contrib: one com.microsoft::MultiHeadAttention node, ONNX Runtime's fused kernel (CPU and
    CUDA) that never materialises the [N, heads, L, L] scores: 85 GB for SVD-XT's first UNet
    level at batch 2 x 25 frames with standard ops, and 1.3-1.5x faster on the CPU.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}")
    old = _ONNX_ATTENTION["kind"]
    _ONNX_ATTENTION["kind"] = kind
    try:
        yield
    finally:
        _ONNX_ATTENTION["kind"] = old


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, heads*d] -> [N, heads, L, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _sdpa(q, k, v, heads: int, bias: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """Eager attention: torch's SDPA (diffusers' default kernel; an additive float mask as diffusers')."""
    mask = None if bias is None else cast(bias, q.dtype)
    out = F.scaled_dot_product_attention(_split(q, heads), _split(k, heads), _split(v, heads), mask, scale=scale)
    return out.transpose(1, 2).flatten(2)


class _ContribAttention(torch.autograd.Function):
    """SDPA in eager mode; one com.microsoft::MultiHeadAttention node when exported."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int, bias: torch.Tensor | None, scale: float | None) -> torch.Tensor:
        return _sdpa(q, k, v, heads, bias, scale)

    @staticmethod
    def symbolic(g, q, k, v, heads: int, bias, scale: float | None):
        # Its default scale is head_dim ** -0.5, as SDPA's. The additive bias is its attention_bias
        # input (after the unused projection bias and key padding mask), [N or 1, heads or 1, L, S].
        inputs = [q, k, v]
        if bias is not None:
            absent = g.op("prim::Constant")
            absent.setType(torch._C.OptionalType.ofTensor())
            inputs += [absent, absent, bias]
        attrs = {"num_heads_i": heads} if scale is None else {"num_heads_i": heads, "scale_f": scale}
        out = g.op("com.microsoft::MultiHeadAttention", *inputs, **attrs)
        out.setType(q.type())
        return out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v per head: q [N, L, heads*d], k/v [N, S, heads*d] -> [N, L, heads*d].

    scale: d^-1/2 when None. bias: an additive float mask broadcastable to [N, heads, L, S]
    (T5's relative positions, LTX's text-padding bias); the contrib form needs its L axis whole.
    """
    if torch.onnx.is_in_onnx_export():
        if _ONNX_ATTENTION["kind"] == "contrib":
            if bias is not None:
                bias = cast(bias.expand(-1, -1, q.shape[1], -1), q.dtype)
            return _ContribAttention.apply(q, k, v, heads, bias, scale)
        return _standard_attention(_split(q, heads), _split(k, heads), _split(v, heads), bias, scale)
    return _sdpa(q, k, v, heads, bias, scale)


def _standard_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """The exported form: MatMul, Softmax, MatMul on [N, heads, L, d], written out so its types are ours.

    Q and K are each scaled by sqrt(scale) (d^-1/4 by default) before the first product, as
    TensorRT's attention fusion requires (and so the logits stay small). The softmax, with the bias
    added, is an fp32 island in an fp16 graph; the logits themselves are the first product's
    output, fp16 there: their largest magnitude is what `svd-export check` reports against 65504.
    """
    root = q.shape[-1] ** -0.25 if scale is None else scale**0.5
    if root != 1.0:
        q, k = q * root, k * root
    logits = torch.matmul(q, k.transpose(-1, -2))
    if fp32_island(logits):
        logits = logits.float() if bias is None else logits.float() + cast(bias, torch.float32)
        probs = torch.softmax(logits, dim=-1).to(v.dtype)
    else:
        probs = (logits if bias is None else logits + cast(bias, logits.dtype)).softmax(-1)
    return torch.matmul(probs, v).transpose(1, 2).flatten(2)
