"""SVD's attention on a GPU without changing its math: self-attention projects q, k and v with one
GEMM (one read of the activations). The torch backend's fast path (export/torch_backend.py) calls
`speed_up_attention` through the family (svd_trt/family.py: speed_up)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.export.layers import attention
from svd_trt.families.svd.port.layers import Attention, ImageSelfAttention


class FastAttention(Attention):
    """Self-attention with one fused QKV GEMM (same keys, same math); cross-attention as the port's."""

    def fuse(self) -> None:
        """One [3*inner, C] weight for q, k, v (self-attention: all three read x). Call after loading.

        to_q, to_k and to_v become views of it, so the fused copy costs no memory.
        """
        linears = (self.to_q, self.to_k, self.to_v)
        rows = [lin.weight.shape[0] for lin in linears]
        with torch.no_grad():
            weight = torch.cat([lin.weight for lin in linears])
            bias = torch.cat([lin.bias for lin in linears]) if self.to_q.bias is not None else None
        for lin, w in zip(linears, weight.split(rows)):
            lin.weight = nn.Parameter(w, requires_grad=False)
        if bias is not None:
            for lin, b in zip(linears, bias.split(rows)):
                lin.bias = nn.Parameter(b, requires_grad=False)
        self.register_buffer("qkv_weight", weight, persistent=False)
        self.register_buffer("qkv_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, L, C], context [N, S, D] -> [N, L, C]."""
        if context is not None or getattr(self, "qkv_weight", None) is None:
            return Attention.forward(self, x, context)
        q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).chunk(3, dim=-1)
        return self.to_out[0](attention(q, k, v, self.heads))


class FastImageSelfAttention(FastAttention, ImageSelfAttention):
    """The VAE's mid-block attention with the fused QKV GEMM."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W] -> [N, C, H, W]."""
        h = self.group_norm(x.flatten(2)).transpose(1, 2)
        h = FastAttention.forward(self, h)
        return x + h.transpose(1, 2).reshape(x.shape)


def speed_up_attention(module: nn.Module) -> int:
    """Swap every port Attention of `module` for its fast twin in place; returns how many."""
    n = 0
    for name, m in module.named_modules():
        if type(m) is Attention:
            m.__class__ = FastAttention
        elif type(m) is ImageSelfAttention:
            m.__class__ = FastImageSelfAttention
        else:
            continue
        if name.endswith("attn1") or isinstance(m, ImageSelfAttention):  # the port's self-attentions
            m.fuse()
        n += 1
    return n
