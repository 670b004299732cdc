"""Building blocks shared by the SVD UNet and the temporal VAE.

Attribute names are diffusers' checkpoint keys (`resnet.py`, `attention.py`,
`attention_processor.py`, `embeddings.py`, `transformer_temporal.py`), so a diffusers
state dict loads with strict=True. Written for the legacy ONNX exporter: frames are a
real axis reached by reshapes of traced shapes, never a Python loop or a
repeat_interleave, and SVD's all-zero `image_only_indicator` is folded away.

Layouts: spatial layers see [B*F, C, H, W]; temporal layers see [B, C, F, H, W];
transformer blocks see [B, F, L, C] with L = H*W tokens per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.export.layers import LayerNorm, TimestepEmbedding, Timesteps, attention, fp32_island

GROUPS = 32  # every GroupNorm in SVD uses 32 groups


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same keys), an fp32 island in an fp16 export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fp32_island(x):
            return super().forward(x)
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


# ----------------------------------------------------------------------------- resnets


class ResnetBlock2D(nn.Module):
    """GN -> SiLU -> conv -> (+ temb) -> GN -> SiLU -> conv, plus a 1x1 shortcut when C changes."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, eps: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(GROUPS, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(GROUPS, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C_in, H, W], temb [N, T] -> [N, C_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


def frame_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (3, 1, 1) Conv3d on x [B, C, F, H, W], computed as a (3, 1) Conv2d on [B, C, F, H*W].

    The same sums over the same weights; ONNX Runtime runs 2-D convolutions with its blocked
    (NCHWc) kernels and 3-D ones without, which made these convs ~30% of the VAE decode.
    """
    y = F.conv2d(x.flatten(3), conv.weight.squeeze(-1), conv.bias, padding=(1, 0))
    return y.reshape(x.shape[0], -1, x.shape[2], x.shape[3], x.shape[4])


class TemporalResnetBlock(nn.Module):
    """ResnetBlock2D's shape with (3, 1, 1) Conv3d kernels: mixes neighbouring frames only."""

    def __init__(self, channels: int, temb_channels: int | None, eps: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(GROUPS, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(GROUPS, channels, eps=eps)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, F, H, W], temb [B, F, T] -> [B, C, F, H, W]."""
        h = frame_conv(self.conv1, F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb)).permute(0, 2, 1)[:, :, :, None, None]
        h = frame_conv(self.conv2, F.silu(self.norm2(h)))
        return x + h


class AlphaBlender(nn.Module):
    """alpha * spatial + (1 - alpha) * temporal with alpha = sigmoid(mix_factor).

    For "learned_with_images" diffusers picks alpha = 1 on image-only frames; SVD's
    indicator is all zeros, so alpha is sigmoid(mix_factor) there too. The VAE decoder
    swaps the roles (switch_spatial_to_temporal_mix): alpha becomes 1 - sigmoid.
    """

    def __init__(
        self, alpha: float, merge_strategy: str, switch_spatial_to_temporal_mix: bool = False
    ) -> None:
        super().__init__()
        if merge_strategy not in ("learned", "learned_with_images"):
            raise ValueError(f"merge_strategy {merge_strategy!r}: SVD uses learned or learned_with_images")
        self.mix_factor = nn.Parameter(torch.tensor([float(alpha)]))
        self.switch = switch_spatial_to_temporal_mix

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor).to(x_spatial.dtype)
        if self.switch:
            alpha = 1.0 - alpha
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


def frames_to_video(x: torch.Tensor, num_frames: int | torch.Tensor) -> torch.Tensor:
    """[B*F, C, H, W] -> [B, C, F, H, W]."""
    return x.reshape(-1, num_frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def video_to_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B*F, C, H, W]."""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


class SpatioTemporalResBlock(nn.Module):
    """A spatial ResnetBlock2D, then a TemporalResnetBlock, blended by a learned alpha."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        eps: float,
        temporal_eps: float | None = None,
        merge_factor: float = 0.5,
        merge_strategy: str = "learned_with_images",
        switch_spatial_to_temporal_mix: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, temb_channels, eps)
        temporal_eps = eps if temporal_eps is None else temporal_eps
        self.temporal_res_block = TemporalResnetBlock(out_channels, temb_channels, temporal_eps)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, switch_spatial_to_temporal_mix)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None, num_frames: int | torch.Tensor
    ) -> torch.Tensor:
        """x [B*F, C_in, H, W], temb [B*F, T] or None -> [B*F, C_out, H, W]."""
        spatial = frames_to_video(self.spatial_res_block(x, temb), num_frames)
        if temb is not None:
            temb = temb.reshape(-1, num_frames, temb.shape[-1])
        temporal = self.temporal_res_block(spatial, temb)
        return video_to_frames(self.time_mixer(spatial, temporal))


# ----------------------------------------------------------------------------- resampling


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. padding=0 is the VAE encoder's: pad right/bottom by one first."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2x (or to `size`, the skip's H, W) then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head attention with diffusers' keys: to_q, to_k, to_v, to_out.0 (+ group_norm)."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.group_norm = (
            GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        )
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        # diffusers' to_out is [Linear, Dropout]; only index 0 holds weights.
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, L, C], context [N, S, D] (None: self-attention) -> [N, L, C]."""
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


class ImageSelfAttention(Attention):
    """The VAE's mid-block attention: GroupNorm, self-attention over H*W pixels, residual."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W] -> [N, C, H, W]."""
        h = self.group_norm(x.flatten(2)).transpose(1, 2)
        h = super().forward(h)
        return x + h.transpose(1, 2).reshape(x.shape)


class GEGLU(nn.Module):
    """proj to 2*dim_out, then value * gelu(gate) (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two half-width products instead of one product split in two: the same dot products,
        # but the export has no Slice copies of the widest activation of the block.
        w_value, w_gate = self.proj.weight.chunk(2, dim=0)
        b_value, b_gate = self.proj.bias.chunk(2, dim=0)
        return F.linear(x, w_value, b_value) * F.gelu(F.linear(x, w_gate, b_gate))


class FeedForward(nn.Module):
    """GEGLU(dim -> 4*dim) -> Linear(4*dim -> dim_out)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        # net.1 is diffusers' dropout; an Identity keeps the output Linear at net.2.
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim_out or dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def cross_attend(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """x [B, M, N, C] attends to context [B, S, D] shared by all M*N tokens of a batch item.

    Cross-attention rows are independent, so one call over [B, M*N, C] equals diffusers'
    per-frame (or per-pixel) copies of the context without making them. With SVD's single
    context token (S = 1, the CLIP image embedding; a static axis of the export) the softmax
    over one key is exactly 1, so every query gets to_out(to_v(context)): no q, k or scores.
    The result is [B, 1, 1, C], broadcast by the caller's residual add.
    """
    if context.shape[1] == 1:
        return attn.to_out[0](attn.to_v(context)).unsqueeze(1)
    return attn(x.flatten(1, 2), context).reshape(x.shape)


class BasicTransformerBlock(nn.Module):
    """Spatial block: self-attention over the H*W tokens of each frame, cross-attention, GEGLU FF."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim)
        self.norm3 = LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, F, L, C], context [B, S, D] -> [B, F, L, C]."""
        x = x + self.attn1(self.norm1(x).flatten(0, 1)).reshape(x.shape)
        x = x + cross_attend(self.attn2, self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TemporalBasicTransformerBlock(nn.Module):
    """Temporal block: FF in, self-attention across the F frames of each pixel, cross-attention, FF."""

    def __init__(self, dim: int, inner_dim: int, heads: int, dim_head: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.is_res = dim == inner_dim
        self.norm_in = LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=inner_dim)
        self.norm1 = LayerNorm(inner_dim)
        self.attn1 = Attention(inner_dim, heads, dim_head)
        self.norm2 = LayerNorm(inner_dim)
        self.attn2 = Attention(inner_dim, heads, dim_head, cross_attention_dim)
        self.norm3 = LayerNorm(inner_dim)
        self.ff = FeedForward(inner_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, F, L, C], context [B, S, D] -> [B, F, L, C]."""
        x = x.transpose(1, 2)  # [B, L, F, C]: attention runs along frames
        h = self.ff_in(self.norm_in(x))
        x = h + x if self.is_res else h
        x = x + self.attn1(self.norm1(x).flatten(0, 1)).reshape(x.shape)
        x = x + cross_attend(self.attn2, self.norm2(x), context)
        h = self.ff(self.norm3(x))
        x = h + x if self.is_res else h
        return x.transpose(1, 2)


def frame_positions(x: torch.Tensor) -> torch.Tensor:
    """x [B, F, ...] -> [F] float32 frame indices 0..F-1, built from x's shape in the graph."""
    ones = torch.ones_like(x[0, :, 0, 0], dtype=torch.float32)
    return ones.cumsum(0) - 1.0


class TransformerSpatioTemporalModel(nn.Module):
    """GN -> proj_in -> (spatial block, + frame embedding, temporal block, blend) x N -> proj_out, residual."""

    def __init__(
        self, heads: int, dim_head: int, in_channels: int, num_layers: int, cross_attention_dim: int
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm(GROUPS, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim) for _ in range(num_layers)]
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            [
                TemporalBasicTransformerBlock(inner, inner, heads, dim_head, cross_attention_dim)
                for _ in range(num_layers)
            ]
        )
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels)
        self.time_mixer = AlphaBlender(0.5, "learned_with_images")
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int | torch.Tensor) -> torch.Tensor:
        """x [B*F, C, H, W], context [B, S, D] -> [B*F, C, H, W]."""
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B*F, H*W, C]
        h = self.proj_in(h)
        h = h.reshape(-1, num_frames, *h.shape[1:])  # [B, F, L, C]
        pos = self.time_proj(frame_positions(h)).to(h.dtype)
        pos = self.time_pos_embed(pos)[:, None, :]  # [F, 1, C]: one embedding per frame
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            h = block(h, context)
            h = self.time_mixer(h, temporal_block(h + pos, context))
        h = self.proj_out(h).flatten(0, 1)  # [B*F, L, C]
        return x + h.transpose(1, 2).reshape(x.shape)
