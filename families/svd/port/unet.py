"""UNetSpatioTemporalConditionModel (diffusers' `unet_spatio_temporal_condition.py`), for export.

Keys equal diffusers' so its state dict loads strictly. Differences that do not change
the math: the timestep is [B] (no scalar broadcast); `image_only_indicator` is folded
away (always zeros in SVD); the image embedding stays [B, 1, D] instead of one copy per
frame (cross-attention rows are independent); the upsamplers always resize to the skip
connection's size, which is diffusers' `forward_upsample_size` path and equals its
plain 2x path whenever h and w divide by 2**(blocks - 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.families.svd.config import UNetConfig
from svd_trt.families.svd.port.layers import (
    GROUPS,
    Downsample2D,
    GroupNorm,
    SpatioTemporalResBlock,
    TimestepEmbedding,
    Timesteps,
    TransformerSpatioTemporalModel,
    Upsample2D,
)

CROSS_ATTN_DOWN = "CrossAttnDownBlockSpatioTemporal"
CROSS_ATTN_UP = "CrossAttnUpBlockSpatioTemporal"
DOWN_TYPES = (CROSS_ATTN_DOWN, "DownBlockSpatioTemporal")
UP_TYPES = (CROSS_ATTN_UP, "UpBlockSpatioTemporal")

# Resnet eps as diffusers hard-codes them per block type (its `resnet_eps=1e-5`
# argument never reaches these blocks): 1e-6 in cross-attention down blocks and
# all up blocks, 1e-5 in plain down blocks and the mid block.
EPS = {
    CROSS_ATTN_DOWN: 1e-6,
    "DownBlockSpatioTemporal": 1e-5,
    "mid": 1e-5,
    CROSS_ATTN_UP: 1e-6,
    "UpBlockSpatioTemporal": 1e-6,
}


def per_block(value: Any, n: int) -> list[Any]:
    """A config value given once for all n blocks, or one per block."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"expected {n} per-block values, got {value!r}")
        return list(value)
    return [value] * n


def per_layer(value: int | tuple[int, ...], n: int) -> list[int]:
    """Transformer depth per layer of a block; like diffusers, a sequence is indexed, not length-checked."""
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


def transformer(channels: int, heads: int, layers: int, cross_dim: int) -> TransformerSpatioTemporalModel:
    return TransformerSpatioTemporalModel(heads, channels // heads, channels, layers, cross_dim)


def transformers(
    channels: int, heads: int, transformer_layers: int | tuple[int, ...], num_layers: int, cross_dim: int
) -> nn.ModuleList:
    """One transformer per resnet of a cross-attention block, each with its own depth."""
    layers = per_layer(transformer_layers, num_layers)
    return nn.ModuleList([transformer(channels, heads, layers[i], cross_dim) for i in range(num_layers)])


class DownBlock(nn.Module):
    """(Cross-attention) down block: [resnet (+ transformer)] x n, then an optional stride-2 conv."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        transformer_layers: int | tuple[int, ...],
        heads: int,
        cross_dim: int,
        add_downsample: bool,
    ) -> None:
        super().__init__()
        eps = EPS[kind]
        self.resnets = nn.ModuleList(
            [
                SpatioTemporalResBlock(
                    in_channels if i == 0 else out_channels, out_channels, temb_channels, eps
                )
                for i in range(num_layers)
            ]
        )
        self.attentions = None
        if kind == CROSS_ATTN_DOWN:
            self.attentions = transformers(out_channels, heads, transformer_layers, num_layers, cross_dim)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int | torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B*F, C, h, w] -> (x at the next resolution, the skips this block leaves)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet, then (transformer, resnet): UNetMidBlockSpatioTemporal with one layer."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        transformer_layers: int | tuple[int, ...],
        heads: int,
        cross_dim: int,
    ) -> None:
        super().__init__()
        eps = EPS["mid"]
        layers = per_layer(transformer_layers, 1)
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(channels, channels, temb_channels, eps) for _ in range(2)]
        )
        self.attentions = nn.ModuleList([transformer(channels, heads, layers[0], cross_dim)])

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int | torch.Tensor
    ) -> torch.Tensor:
        x = self.resnets[0](x, temb, num_frames)
        x = self.attentions[0](x, context, num_frames)
        return self.resnets[1](x, temb, num_frames)


class UpBlock(nn.Module):
    """(Cross-attention) up block: [concat skip, resnet (+ transformer)] x n, then an optional upsample."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        transformer_layers: int | tuple[int, ...],
        heads: int,
        cross_dim: int,
        add_upsample: bool,
    ) -> None:
        super().__init__()
        eps = EPS[kind]
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            resnets.append(SpatioTemporalResBlock(resnet_in + skip, out_channels, temb_channels, eps))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = None
        if kind == CROSS_ATTN_UP:
            self.attentions = transformers(out_channels, heads, transformer_layers, num_layers, cross_dim)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        num_frames: int | torch.Tensor,
        size: torch.Size | None,
    ) -> torch.Tensor:
        """x [B*F, C, h, w]; skips popped from the end; `size` is the next skip's (h, w)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb, num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class UNetSpatioTemporal(nn.Module):
    """SVD's denoiser: sample [B, F, C_in, h, w] -> [B, F, C_out, h, w]."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        n = len(cfg.down_block_types)
        if len(cfg.up_block_types) != n or len(cfg.block_out_channels) != n:
            raise ValueError(
                "down_block_types, up_block_types and block_out_channels need one entry per block"
            )
        for kind in cfg.down_block_types + cfg.up_block_types:
            if kind not in DOWN_TYPES + UP_TYPES:
                raise ValueError(f"unknown block type {kind!r}")
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0])
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.add_time_proj = Timesteps(cfg.addition_time_embed_dim)
        self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)
        heads = per_block(cfg.num_attention_heads, n)
        cross = per_block(cfg.cross_attention_dim, n)
        layers = per_block(cfg.layers_per_block, n)
        tlayers = per_block(cfg.transformer_layers_per_block, n)
        self.down_blocks = nn.ModuleList(
            [
                DownBlock(
                    kind, ch[max(i - 1, 0)], ch[i], temb, layers[i], tlayers[i], heads[i], cross[i], i < n - 1
                )
                for i, kind in enumerate(cfg.down_block_types)
            ]
        )
        self.mid_block = MidBlock(ch[-1], temb, tlayers[-1], heads[-1], cross[-1])
        self.up_blocks = nn.ModuleList(
            [self._up_block(cfg, i, temb, heads, cross, layers, tlayers) for i in range(n)]
        )
        self.conv_norm_out = GroupNorm(GROUPS, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @staticmethod
    def _up_block(
        cfg: UNetConfig, i: int, temb: int, heads: list, cross: list, layers: list, tlayers: list
    ) -> UpBlock:
        """Up block i reads the down path backwards; it has one resnet more than its down block."""
        rev = list(reversed(cfg.block_out_channels))
        n = len(rev)
        j = n - 1 - i
        return UpBlock(
            cfg.up_block_types[i],
            in_channels=rev[min(i + 1, n - 1)],
            prev_channels=rev[max(i - 1, 0)],
            out_channels=rev[i],
            temb_channels=temb,
            num_layers=layers[j] + 1,
            transformer_layers=tlayers[j],
            heads=heads[j],
            cross_dim=cross[j],
            add_upsample=i < n - 1,
        )

    def embed_time(
        self, timestep: torch.Tensor, added_time_ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """timestep [B], added_time_ids [B, K] -> [B, 4*C0]: sinusoids of both, through their MLPs, summed.

        The sinusoids are fp32 (arguments up to ~1000); an fp16 export keeps the MLPs in fp32 too
        (layers.py: fp32 islands), eager torch runs them in the module's dtype as diffusers does.
        """
        mlp_dtype = torch.float32 if torch.onnx.is_in_onnx_export() else dtype
        emb = self.time_embedding(self.time_proj(timestep).to(mlp_dtype))
        ids = self.add_time_proj(added_time_ids.flatten()).reshape(added_time_ids.shape[0], -1)
        return (emb + self.add_embedding(ids.to(mlp_dtype))).to(dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """sample [B, F, C_in, h, w], timestep [B], encoder_hidden_states [B, S, D], added_time_ids [B, K]."""
        num_frames = sample.shape[1]
        emb = self.embed_time(timestep, added_time_ids, sample.dtype)
        emb = emb[:, None, :].expand(-1, num_frames, -1).flatten(0, 1)  # [B*F, T]: one copy per frame
        context = encoder_hidden_states
        x = self.conv_in(sample.flatten(0, 1))
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, context, num_frames)
            skips.extend(block_skips)
        x = self.mid_block(x, emb, context, num_frames)
        for block in self.up_blocks:
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[-2:] if skips else None
            x = block(x, block_skips, emb, context, num_frames, size)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x.reshape(-1, num_frames, *x.shape[1:])
