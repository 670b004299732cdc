"""LTX-Video's denoiser: a port of diffusers' `LTXVideoTransformer3DModel` (`transformer_ltx.py`).

Keys equal diffusers'. The exported forward takes what the host computes, so nothing in the
graph depends on the traced shape: RoPE cos/sin [B, S, inner_dim] (fp32, LTXVideoRotaryPosEmbed's
layout), a per-token timestep [B, S] (t2v broadcasts t, i2v gives t * (1 - mask)) and the text
mask [B, L] as 0/1, which becomes diffusers' (1 - m) * -10000 cross-attention bias in the graph.

fp16 (TensorRT target): the matmuls run in fp16; fp32 islands keep the RMS / LayerNorm statistics,
the RoPE rotation (angles reach ~1.6e4 rad: in fp16 the positions scramble), the attention softmax
with its text bias, and the timestep embedding (sinusoids of t up to 1000, then its MLP and the
6-way modulation vector) in fp32; the embedding is rounded to fp16 once, at the modulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.export.layers import attention, fp32_island
from svd_trt.families.ltx.config import TransformerConfig
from svd_trt.families.ltx.port.layers import CombinedTimestepEmbedding, RMSNorm, cast, fp32, layer_norm

QK_NORM_EPS = 1e-5  # LTXAttention's norm_q / norm_k
OUT_NORM_EPS = 1e-6
TEXT_MASK_BIAS = -10000.0  # diffusers: (1 - mask) * -10000.0
NUM_ADA_PARAMS = 6  # shift, scale, gate for attention and for the feed-forward


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in fp32 (diffusers')."""
    real, imag = x.unflatten(2, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(2)
    return cast(fp32(x) * cos + fp32(rotated) * sin, x.dtype)


class LTXAttention(nn.Module):
    """q/k RMS-normed across heads, RoPE on q and k for self-attention, SDPA, to_out."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, kv_dim: int | None, bias: bool, out_bias: bool
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        kv_dim = kv_dim or query_dim
        self.heads = heads
        self.norm_q = RMSNorm(inner, QK_NORM_EPS, elementwise_affine=True)
        self.norm_k = RMSNorm(inner, QK_NORM_EPS, elementwise_affine=True)
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias)])  # [1] is a Dropout

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, S, C]; context [B, L, C] (None: self-attention); bias [B, 1, 1, L] -> [B, S, C]."""
        context = x if context is None else context
        q = self.norm_q(self.to_q(x))
        k = self.norm_k(self.to_k(context))
        if rope is not None:
            q, k = apply_rotary_emb(q, *rope), apply_rotary_emb(k, *rope)
        return self.to_out[0](attention(q, k, self.to_v(context), self.heads, bias=bias))


class GELUProjection(nn.Module):
    """diffusers' GELU activation module: proj, then GELU (tanh form for gelu-approximate)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """GELU(dim -> 4 dim) -> Linear(4 dim -> dim); net.1 is diffusers' Dropout."""

    def __init__(self, dim: int, activation_fn: str) -> None:
        super().__init__()
        approximate = "tanh" if activation_fn == "gelu-approximate" else "none"
        self.net = nn.ModuleList(
            [GELUProjection(dim, 4 * dim, approximate), nn.Identity(), nn.Linear(4 * dim, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class LTXVideoTransformerBlock(nn.Module):
    """AdaLN-modulated self-attention with RoPE, unmodulated cross-attention to the text, FF."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        dim, affine = cfg.inner_dim, cfg.norm_elementwise_affine
        heads, head_dim = cfg.num_attention_heads, cfg.attention_head_dim
        self.norm1 = RMSNorm(dim, cfg.norm_eps, affine)
        self.attn1 = LTXAttention(dim, heads, head_dim, None, cfg.attention_bias, cfg.attention_out_bias)
        self.norm2 = RMSNorm(dim, cfg.norm_eps, affine)
        self.attn2 = LTXAttention(
            dim, heads, head_dim, cfg.cross_attention_dim, cfg.attention_bias, cfg.attention_out_bias
        )
        self.ff = FeedForward(dim, cfg.activation_fn)
        self.scale_shift_table = nn.Parameter(torch.randn(NUM_ADA_PARAMS, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        temb: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        text_bias: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, S, D], context [B, L, D], temb [B, S, 6 D] -> [B, S, D]."""
        ada = cast(self.scale_shift_table, temb.dtype) + temb.unflatten(2, (NUM_ADA_PARAMS, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + self.attn1(h, rope=rope) * gate_msa
        x = x + self.attn2(x, context, bias=text_bias)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + self.ff(h) * gate_mlp


class AdaLayerNormSingle(nn.Module):
    """t [N] -> (linear(SiLU(emb)) [N, 6 D], emb [N, D]): the modulation vector and the embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = CombinedTimestepEmbedding(dim)
        self.linear = nn.Linear(dim, NUM_ADA_PARAMS * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.emb(t, dtype)
        w, b = cast(self.linear.weight, dtype), cast(self.linear.bias, dtype)
        return F.linear(F.silu(emb), w, b), emb


class PixArtAlphaTextProjection(nn.Module):
    """caption [B, L, caption_channels] -> linear_1 -> tanh GELU -> linear_2 -> [B, L, D]."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class LTXVideoTransformer3D(nn.Module):
    """(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, rope_cos, rope_sin)
    -> noise_pred [B, S, out_channels] (the velocity)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.inner_dim
        self.proj_in = nn.Linear(cfg.in_channels, dim)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.time_embed = AdaLayerNormSingle(dim)
        self.caption_projection = PixArtAlphaTextProjection(cfg.caption_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [LTXVideoTransformerBlock(cfg) for _ in range(cfg.num_layers)]
        )
        self.proj_out = nn.Linear(dim, cfg.out_channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
    ) -> torch.Tensor:
        """hidden_states [B, S, C_in], encoder_hidden_states [B, L, caption], timestep [B, S] float32,
        encoder_attention_mask [B, L] 0/1 float32, rope_cos/sin [B, S, D] float32 -> [B, S, C_out]."""
        text_bias = ((1.0 - fp32(encoder_attention_mask)) * TEXT_MASK_BIAS)[:, None, None, :]
        x = self.proj_in(hidden_states)
        # one embedding per token: [B*S] -> [B, S, .]; fp32 in an fp16 export, rounded once below
        emb_dtype = torch.float32 if fp32_island(x) else x.dtype
        temb, embedded = self.time_embed(timestep.flatten(), emb_dtype)
        temb = cast(temb.reshape(*timestep.shape, -1), x.dtype)
        embedded = cast(embedded.reshape(*timestep.shape, -1), x.dtype)
        context = self.caption_projection(encoder_hidden_states)
        rope = (rope_cos, rope_sin)
        for block in self.transformer_blocks:
            x = block(x, context, temb, rope, text_bias)
        shift, scale = (cast(self.scale_shift_table, x.dtype) + embedded[:, :, None]).unbind(dim=2)
        x = layer_norm(x, self.cfg.inner_dim, OUT_NORM_EPS) * (1 + scale) + shift
        return self.proj_out(x)
