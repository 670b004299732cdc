"""LTX-Video's text encoder: a port of transformers' `T5EncoderModel` (the encoder stack).

Attribute names are the checkpoint's keys (`shared`, `encoder.block.N.layer.{0,1}...`,
`encoder.final_layer_norm`), so a transformers state dict loads strictly. Called without an
attention mask, as diffusers' LTXPipeline calls it: every token attends to all L tokens.
The relative position bias is built from the input's length in the graph (no constant of L).

fp16: T5's feed-forward output `wo` overflows fp16 in deep blocks of t5-v1_1-xxl (NaN, then a
black video). As transformers (`_keep_in_fp32_modules = ["wo"]`), `wo` runs in fp32 and its
output is added to the residual stream in fp32; the stream stays fp32 from the embedding on, so
every residual add is fp32 and every RMS statistic too. Attention and the input projections
run in the module's dtype, with an fp32 softmax in an fp16 export (families/svd/port/layers.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.export.layers import attention
from svd_trt.families.ltx.config import T5EncoderConfig
from svd_trt.families.ltx.port.layers import cast, fp32

# transformers saves T5EncoderModel's input embedding once, as `shared.weight`; older versions
# also wrote its tied copy under this key. The loader checks such a copy equals `shared.weight`.
TIED_KEYS = ("encoder.embed_tokens.weight",)


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """transformers' ACT2FN: gelu_new is the tanh approximation, gelu the exact erf form."""
    if name == "gelu_new":
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    return F.relu(x)


class T5LayerNorm(nn.Module):
    """RMS norm with a weight, no mean, no bias; the statistic in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = fp32(x).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * cast(x, self.weight.dtype)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5 buckets of (key - query) offsets: exact below num_buckets / 4, then
    logarithmic up to max_distance (transformers' `_relative_position_bucket`)."""
    num_buckets //= 2
    buckets = (relative > 0).to(torch.long) * num_buckets
    distance = torch.abs(relative)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) = -inf where distance is 0: masked by is_small below, as in transformers
    large = max_exact + (
        torch.log(distance.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, distance, large)


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention plus the shared relative position bias."""

    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.n_heads = cfg.num_heads
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> [1, heads, L, L]: the bias every block adds to its logits."""
        ones = torch.ones_like(x[0, :, 0], dtype=torch.long)
        position = ones.cumsum(0) - 1  # 0..L-1 from x's shape, never a constant of the traced L
        relative = position[None, :] - position[:, None]  # key - query
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        out = attention(self.q(x), self.k(x), self.v(x), self.n_heads, bias=position_bias, scale=1.0)
        return self.o(out)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """x is the fp32 residual stream in every mode."""
        return x + fp32(self.SelfAttention(self.layer_norm(x), position_bias))


class T5DenseGatedActDense(nn.Module):
    """wo(act(wi_0 x) * wi_1 x), wo in fp32."""

    def __init__(self, cfg: T5EncoderConfig) -> None:
        super().__init__()
        self.act = cfg.dense_act_fn
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = activation(self.act, self.wi_0(x)) * self.wi_1(x)
        return F.linear(fp32(h), fp32(self.wo.weight))


class T5DenseActDense(nn.Module):
    """wo(act(wi x)), wo in fp32 (original T5's relu feed-forward)."""

    def __init__(self, cfg: T5EncoderConfig) -> None:
        super().__init__()
        self.act = cfg.dense_act_fn
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fp32(activation(self.act, self.wi(x))), fp32(self.wo.weight))


class T5LayerFF(nn.Module):
    def __init__(self, cfg: T5EncoderConfig) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(cfg) if cfg.is_gated_act else T5DenseActDense(cfg)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, cfg: T5EncoderConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, has_relative_attention_bias), T5LayerFF(cfg)])

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        return self.layer[1](self.layer[0](x, position_bias))


class T5Stack(nn.Module):
    """The encoder blocks (block 0 owns the relative position table) and the final RMS norm."""

    def __init__(self, cfg: T5EncoderConfig) -> None:
        super().__init__()
        self.block = nn.ModuleList([T5Block(cfg, i == 0) for i in range(cfg.num_layers)])
        self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        bias = self.block[0].layer[0].SelfAttention.position_bias(embeds)
        x = fp32(embeds)
        for block in self.block:
            x = block(x, bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Module):
    """input_ids [B, L] int64 -> text_embeds [B, L, d_model] (the last hidden state)."""

    def __init__(self, cfg: T5EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.shared(input_ids))
