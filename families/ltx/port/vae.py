"""LTX-Video's causal video VAE: a port of diffusers' `AutoencoderKLLTXVideo` (`autoencoder_kl_ltx.py`).

Keys equal diffusers' (the latents_mean / latents_std buffers included: the host normalizes with
them, no graph uses them). Every frame, height and width is read from the input's shape by
reshapes (`unflatten` with one -1), so one exported graph runs any F = 8k+1 (k+1 latent frames)
and any H, W multiple of the spatial ratio. Depth-to-space and space-to-depth move one factor at a
time (transposes of rank 6, within TensorRT's limit of 8). fp32 everywhere: its RMS norms use eps 1e-8, below fp16's smallest subnormal.

encode -> (latent_mean, latent_std), the posterior diffusers' DiagonalGaussianDistribution holds
(the host draws mean + std * noise); decode(latents[, timestep]) -> raw frames in about [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.families.ltx.config import VAEConfig
from svd_trt.families.ltx.port.layers import CombinedTimestepEmbedding, rms_norm

RMS_EPS = 1e-8  # every RMS norm of the VAE
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return v if isinstance(v, tuple) else (v, v, v)


class CausalConv3d(nn.Module):
    """Conv3d padding time by repeating edge frames (causal: the first, k-1 times, in front; else the
    first and last, (k-1)/2 times each) and H, W by zeros."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple = 1,
        is_causal: bool = True,
    ) -> None:
        super().__init__()
        k = _triple(kernel_size)
        self.time_pad = k[0] - 1
        self.is_causal = is_causal
        self.conv = nn.Conv3d(
            in_channels, out_channels, k, stride=_triple(stride), padding=(0, k[1] // 2, k[2] // 2)
        )

    def forward(self, x: torch.Tensor, out_order: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, F, H, W]; out_order: the output channels to produce, in this order (a permutation
        of the weights' rows, folded into the exported weights)."""
        if self.time_pad:
            first, last = x[:, :, :1], x[:, :, -1:]
            if self.is_causal:
                x = torch.cat([first] * self.time_pad + [x], dim=2)
            else:
                half = self.time_pad // 2
                x = torch.cat([first] * half + [x] + [last] * half, dim=2)
        if out_order is None:
            return self.conv(x)
        c = self.conv
        return F.conv3d(x, c.weight[out_order], c.bias[out_order], c.stride, c.padding)


class ChannelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (keys weight, bias) over the channel axis of [B, C, F, H, W]. Explicit permutes:
    the legacy exporter writes movedim(-1, 1) as a Transpose with a negative perm entry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


def channel_rms(x: torch.Tensor) -> torch.Tensor:
    """diffusers' RMSNorm(eps=1e-8, no affine) over channels, without moving them last."""
    return rms_norm(x, RMS_EPS, dim=1)


class ResnetBlock3d(nn.Module):
    """RMS -> (shift/scale by t) -> SiLU -> conv -> RMS -> (shift/scale) -> SiLU -> conv, plus the
    input (LayerNorm + 1x1x1 conv when the channels change)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        eps: float,
        is_causal: bool,
        timestep_conditioning: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, is_causal=is_causal)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, is_causal=is_causal)
        self.norm3 = self.conv_shortcut = None
        if in_channels != out_channels:
            self.norm3 = ChannelLayerNorm(in_channels, eps=eps)
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1, is_causal=is_causal)
        self.scale_shift_table = None
        if timestep_conditioning:
            self.scale_shift_table = nn.Parameter(torch.randn(4, in_channels) / in_channels**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, F, H, W], temb [B, 4 C, 1, 1, 1] for a conditioned block."""
        h = channel_rms(x)
        if self.scale_shift_table is not None:
            t = temb.unflatten(1, (4, -1)) + self.scale_shift_table[None, ..., None, None, None]
            shift_1, scale_1, shift_2, scale_2 = t.unbind(dim=1)
            h = h * (1 + scale_1) + shift_1
        h = self.conv1(F.silu(h))
        h = channel_rms(h)
        if self.scale_shift_table is not None:
            h = h * (1 + scale_2) + shift_2
        h = self.conv2(F.silu(h))
        if self.norm3 is not None:
            x = self.conv_shortcut(self.norm3(x))
        return h + x


def space_to_depth(x: torch.Tensor, stride: tuple[int, int, int], w_first: bool = False) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, C * s0 s1 s2, F/s0, H/s1, W/s2], channels (C, s0, s_h, s_w) as diffusers'
    downsampler, or (C, s0, s_w, s_h) with `w_first` (its patchify): depth_to_space's steps reversed."""
    s0, s1, s2 = stride
    if s0 > 1:  # [B, C, F, s0, H, W] -> [B, C s0, F, H, W]
        x = x.unflatten(2, (-1, s0)).transpose(2, 3).flatten(1, 2)
    for axis in ("w", "h") if w_first else ("h", "w"):
        if axis == "h" and s1 > 1:  # [B, ., F, H, s_h, W] -> [B, . s_h, F, H, W]
            x = x.unflatten(3, (-1, s1)).permute(0, 1, 4, 2, 3, 5).flatten(1, 2)
        if axis == "w" and s2 > 1:  # [B, ., F, H, W, s_w] -> [B, . s_w, F, H, W]
            x = x.unflatten(4, (-1, s2)).permute(0, 1, 5, 2, 3, 4).flatten(1, 2)
    return x


def depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """[B, C * s0 s1 s2, F, H, W] -> [B, C, F s0, H s1, W s2], channels (C, s0, s_h, s_w) as diffusers'
    upsampler.

    One factor at a time, innermost first, each a rank-6 transpose moving one axis: ONNX Runtime runs
    those as strided block copies, 2.7x faster than one rank-8 permute of all three factors.
    """
    s0, s1, s2 = stride
    if s2 > 1:  # [B, ., s_w, F, H, W] -> [B, ., F, H, W s_w]
        x = x.unflatten(1, (-1, s2)).permute(0, 1, 3, 4, 5, 2).flatten(4, 5)
    if s1 > 1:  # [B, ., s_h, F, H, W'] -> [B, ., F, H s_h, W']
        x = x.unflatten(1, (-1, s1)).permute(0, 1, 3, 4, 2, 5).flatten(3, 4)
    if s0 > 1:  # [B, C, s0, F, H', W'] -> [B, C, F s0, H', W']
        x = x.unflatten(1, (-1, s0)).transpose(2, 3).flatten(2, 3)
    return x


class Downsampler3d(nn.Module):
    """0.9.5 space-to-depth downsampling: conv then s2d, plus the s2d input averaged in groups."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, int, int], is_causal: bool
    ) -> None:
        super().__init__()
        self.stride = stride
        volume = stride[0] * stride[1] * stride[2]
        self.group_size = in_channels * volume // out_channels
        self.conv = CausalConv3d(in_channels, out_channels // volume, 3, is_causal=is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:  # repeat the first s0 - 1 frames so 8k+1 frames split evenly
            x = torch.cat([x[:, :, : self.stride[0] - 1], x], dim=2)
        residual = space_to_depth(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return space_to_depth(self.conv(x), self.stride) + residual


class Upsampler3d(nn.Module):
    """Depth-to-space x2 in F, H, W after a conv; the first output frame dropped (causal time)."""

    def __init__(self, in_channels: int, is_causal: bool, residual: bool, upscale_factor: int) -> None:
        super().__init__()
        self.stride = (2, 2, 2)
        self.residual = residual
        self.repeats = 8 // upscale_factor
        self.conv = CausalConv3d(in_channels, in_channels * 8 // upscale_factor, 3, is_causal=is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.residual:  # depth-to-space is a permutation: added before it, one rearrangement for both
            h = h + x.repeat(1, self.repeats, 1, 1, 1)
        return depth_to_space(h, self.stride)[:, :, self.stride[0] - 1 :]


class DownBlock3D(nn.Module):
    """LTXVideoDownBlock3D (0.9.0) or LTXVideo095DownBlock3D: resnets, then the downsampler
    (0.9.0: a stride-2 causal conv and a resnet to the new width)."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        eps: float,
        scale: bool,
        is_causal: bool,
        downsample_type: str,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3d(in_channels, in_channels, eps, is_causal) for _ in range(num_layers)
        )
        self.downsamplers = None
        if scale:
            if kind == "LTXVideoDownBlock3D" or downsample_type == "conv":
                sampler = CausalConv3d(in_channels, in_channels, 3, stride=2, is_causal=is_causal)
            else:
                stride = {"spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}[
                    downsample_type
                ]
                sampler = Downsampler3d(in_channels, out_channels, stride, is_causal)
            self.downsamplers = nn.ModuleList([sampler])
        self.conv_out = None
        if kind == "LTXVideoDownBlock3D" and in_channels != out_channels:
            self.conv_out = ResnetBlock3d(in_channels, out_channels, eps, is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.conv_out is not None:
            x = self.conv_out(x)
        return x


class MidBlock3d(nn.Module):
    """Resnets at one width; with timestep conditioning its own embedding of t (4 C wide)."""

    def __init__(
        self, channels: int, num_layers: int, eps: float, is_causal: bool, timestep_conditioning: bool = False
    ) -> None:
        super().__init__()
        self.time_embedder = CombinedTimestepEmbedding(channels * 4) if timestep_conditioning else None
        self.resnets = nn.ModuleList(
            ResnetBlock3d(channels, channels, eps, is_causal, timestep_conditioning)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        temb = None
        if self.time_embedder is not None:
            temb = self.time_embedder(t.flatten(), x.dtype)[:, :, None, None, None]
        for resnet in self.resnets:
            x = resnet(x, temb)
        return x


class UpBlock3d(nn.Module):
    """(resnet to the new width) -> depth-to-space upsampler -> resnets, all conditioned on t if asked.

    As diffusers, a width-changing conv_in runs before t is embedded: with timestep conditioning
    that combination fails there too; no released config builds it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        eps: float,
        scale: bool,
        is_causal: bool,
        timestep_conditioning: bool,
        upsample_residual: bool,
        upscale_factor: int,
    ) -> None:
        super().__init__()
        self.time_embedder = CombinedTimestepEmbedding(in_channels * 4) if timestep_conditioning else None
        self.conv_in = None
        if in_channels != out_channels:
            self.conv_in = ResnetBlock3d(in_channels, out_channels, eps, is_causal, timestep_conditioning)
        self.upsamplers = None
        if scale:
            sampler = Upsampler3d(out_channels * upscale_factor, is_causal, upsample_residual, upscale_factor)
            self.upsamplers = nn.ModuleList([sampler])
        self.resnets = nn.ModuleList(
            ResnetBlock3d(out_channels, out_channels, eps, is_causal, timestep_conditioning)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x, t)
        temb = None
        if self.time_embedder is not None:
            temb = self.time_embedder(t.flatten(), x.dtype)[:, :, None, None, None]
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        for resnet in self.resnets:
            x = resnet(x, temb)
        return x


class Encoder3d(nn.Module):
    """video [B, 3, F, H, W] -> [B, C + 1, F', H', W']: C mean channels and one log-variance."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.patch_size, self.patch_size_t = cfg.patch_size, cfg.patch_size_t
        ch, eps, causal = cfg.block_out_channels, cfg.resnet_norm_eps, cfg.encoder_causal
        self.conv_in = CausalConv3d(cfg.in_channels * cfg.patch_size**2, ch[0], 3, is_causal=causal)
        is_095 = cfg.down_block_types[-1] == "LTXVideo095DownBlock3D"
        count = len(ch) - (1 if is_095 else 0)
        blocks, out = [], ch[0]
        for i in range(count):
            inp = out
            out = ch[i + 1] if (is_095 or i + 1 < count) else ch[i]
            blocks.append(
                DownBlock3D(
                    cfg.down_block_types[i],
                    inp,
                    out,
                    cfg.layers_per_block[i],
                    eps,
                    cfg.spatio_temporal_scaling[i],
                    causal,
                    cfg.downsample_type[i],
                )
            )
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock3d(out, cfg.layers_per_block[-1], eps, causal)
        self.conv_out = CausalConv3d(out, cfg.latent_channels + 1, 3, is_causal=causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # patchify: channels in diffusers' (C, pt, p_w, p_h) order
        x = self.conv_in(space_to_depth(x, (self.patch_size_t, self.patch_size, self.patch_size), w_first=True))
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(channel_rms(x)))


class Decoder3d(nn.Module):
    """latents [B, C, F', H', W'] (+ t [B] if conditioned) -> frames [B, 3, F, H, W]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.patch_size, self.patch_size_t = cfg.patch_size, cfg.patch_size_t
        eps, causal, cond = cfg.resnet_norm_eps, cfg.decoder_causal, cfg.timestep_conditioning
        ch = tuple(reversed(cfg.decoder_block_out_channels))
        scaling = tuple(reversed(cfg.decoder_spatio_temporal_scaling))
        layers = tuple(reversed(cfg.decoder_layers_per_block))
        residual = tuple(reversed(cfg.upsample_residual))
        factor = tuple(reversed(cfg.upsample_factor))
        out = ch[0]
        self.conv_in = CausalConv3d(cfg.latent_channels, out, 3, is_causal=causal)
        self.mid_block = MidBlock3d(out, layers[0], eps, causal, cond)
        blocks = []
        for i in range(len(ch)):
            inp, out = out // factor[i], ch[i] // factor[i]
            blocks.append(
                UpBlock3d(inp, out, layers[i + 1], eps, scaling[i], causal, cond, residual[i], factor[i])
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_out = CausalConv3d(out, cfg.out_channels * cfg.patch_size**2, 3, is_causal=causal)
        p = cfg.patch_size  # (C, pt, p_w, p_h) -> (C, pt, p_h, p_w); not a checkpoint key
        order = torch.arange(cfg.out_channels * cfg.patch_size_t * p * p).unflatten(0, (-1, p, p)).transpose(1, 2)
        self.register_buffer("unpatchify_order", order.flatten(), persistent=False)
        self.time_embedder = self.scale_shift_table = self.timestep_scale_multiplier = None
        if cond:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0))
            self.time_embedder = CombinedTimestepEmbedding(out * 2)
            self.scale_shift_table = nn.Parameter(torch.randn(2, out) / out**0.5)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_in(z)
        if self.timestep_scale_multiplier is not None:
            t = t * self.timestep_scale_multiplier
        x = self.mid_block(x, t)
        for block in self.up_blocks:
            x = block(x, t)
        x = channel_rms(x)
        if self.time_embedder is not None:
            temb = self.time_embedder(t.flatten(), x.dtype)[:, :, None, None, None].unflatten(1, (2, -1))
            shift, scale = (temb + self.scale_shift_table[None, ..., None, None, None]).unbind(dim=1)
            x = x * (1 + scale) + shift
        # unpatchify: conv_out's channels (C, pt, p_w, p_h) produced as (C, pt, p_h, p_w), depth_to_space's order
        x = self.conv_out(F.silu(x), self.unpatchify_order)
        return depth_to_space(x, (self.patch_size_t, self.patch_size, self.patch_size))


class LTXVideoVAE(nn.Module):
    """encode: video -> posterior (mean, std); decode: latents (+ timestep) -> frames. No scaling here."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.decoder = Decoder3d(cfg)
        self.register_buffer("latents_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latents_std", torch.ones(cfg.latent_channels))

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, 3, F, H, W] in [-1, 1] -> latent_mean, latent_std [B, C, F', H', W'] (unnormalized).

        diffusers repeats the one log-variance channel C - 1 times; here it is broadcast instead.
        """
        h = self.encoder(image)
        c = self.cfg.latent_channels
        logvar = torch.clamp(h[:, c:], *LOGVAR_RANGE)
        mean = h[:, :c]
        return mean, torch.exp(0.5 * logvar).expand_as(mean)

    def decode(self, latents: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """latents [B, C, F', H', W'] (denormalized), timestep [B] for a conditioned decoder ->
        frames [B, 3, 8(F'-1)+1, H' s, W' s] in about [-1, 1]."""
        return self.decoder(latents, timestep)
