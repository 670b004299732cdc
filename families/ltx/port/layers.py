"""Blocks shared by LTX-Video's transformer and VAE, with diffusers' checkpoint keys.

RMS norms are written out: the legacy ONNX exporter has no `aten::rms_norm` (torch.nn.RMSNorm),
and writing them as diffusers' `RMSNorm` does keeps the statistic in fp32 in every dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.export.layers import TimestepEmbedding, cast, fp32_island, timestep_embedding

TIMESTEP_SINUSOIDS = 256  # PixArt-alpha's Timesteps(256, flip_sin_to_cos=True, shift 0)


def fp32(x: torch.Tensor) -> torch.Tensor:
    return cast(x, torch.float32)


def rms_norm(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) along `dim`, the statistic in fp32, the result in x's dtype."""
    x32 = fp32(x)
    return cast(x32 * torch.rsqrt(x32.pow(2).mean(dim, keepdim=True) + eps), x.dtype)


class RMSNorm(nn.Module):
    """diffusers' RMSNorm and torch.nn.RMSNorm over the last axis (key `weight` when affine).

    With a weight, the product is taken in fp32 before rounding once to x's dtype.
    """

    def __init__(self, dim: int, eps: float, elementwise_affine: bool) -> None:
        super().__init__()
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = fp32(x)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * fp32(self.weight)
        return cast(y, x.dtype)


def layer_norm(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis (`dim` wide: a constant, not a traced size) without affine
    terms; an fp32 island in an fp16 export."""
    if fp32_island(x):
        return cast(F.layer_norm(fp32(x), (dim,), eps=eps), x.dtype)
    return F.layer_norm(x, (dim,), eps=eps)


class CombinedTimestepEmbedding(nn.Module):
    """diffusers' PixArtAlphaCombinedTimestepSizeEmbeddings without size conditions (LTX's use):
    t [N] -> 256 cos|sin sinusoids (fp32) -> linear_1 -> SiLU -> linear_2, in `dtype`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_SINUSOIDS, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(cast(timestep_embedding(t, TIMESTEP_SINUSOIDS), dtype))
