"""AutoencoderKLTemporalDecoder (diffusers' `autoencoder_kl_temporal_decoder.py`), for export.

The encoder is the plain SD VAE encoder (`vae.py`: DownEncoderBlock2D, UNetMidBlock2D);
the decoder mixes frames with SpatioTemporalResBlocks and a final (3, 1, 1) Conv3d.
`decode` takes ONE chunk of ONE video, [F, C, h, w], and reads F from the shape, so a
single exported graph decodes chunks of any length, 1 included. Keys equal diffusers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svd_trt.families.svd.config import VAEConfig
from svd_trt.families.svd.port.layers import (
    GROUPS,
    Downsample2D,
    GroupNorm,
    ImageSelfAttention,
    ResnetBlock2D,
    SpatioTemporalResBlock,
    Upsample2D,
    frame_conv,
    frames_to_video,
    video_to_frames,
)

EPS = 1e-6  # every VAE norm, except the decoder's temporal resnets
TEMPORAL_EPS = 1e-5


def mid_attention(channels: int) -> ImageSelfAttention:
    """One head as wide as the block (diffusers: attention_head_dim = channels), biased projections."""
    return ImageSelfAttention(channels, 1, channels, bias=True, norm_num_groups=GROUPS, eps=EPS)


def decoder_resblock(in_channels: int, out_channels: int) -> SpatioTemporalResBlock:
    """No time embedding; alpha = 1 - sigmoid(mix_factor) weighs the spatial branch."""
    return SpatioTemporalResBlock(
        in_channels,
        out_channels,
        temb_channels=None,
        eps=EPS,
        temporal_eps=TEMPORAL_EPS,
        merge_factor=0.0,
        merge_strategy="learned",
        switch_spatial_to_temporal_mix=True,
    )


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, EPS)
                for i in range(num_layers)
            ]
        )
        # padding=0: pad right/bottom then stride 2, so H halves rounding down.
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UNetMidBlock2D(nn.Module):
    """resnet, attention, resnet."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([mid_attention(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    """image [B, 3, H, W] -> moments [B, 2*latent, H/s, W/s]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        for kind in cfg.down_block_types:
            if kind != "DownEncoderBlock2D":
                raise ValueError(f"VAE down block {kind!r}: the temporal VAE uses DownEncoderBlock2D")
        ch = cfg.block_out_channels
        n = len(ch)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, i < n - 1) for i in range(n)]
        )
        self.mid_block = UNetMidBlock2D(ch[-1])
        self.conv_norm_out = GroupNorm(GROUPS, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class MidBlockTemporalDecoder(nn.Module):
    """resnet, then attention and resnet once.

    diffusers builds `layers_per_block` resnets but one attention and zips them, so
    only resnets[0] and resnets[1] run (and with layers_per_block=1 the attention
    never runs): matched here, every weight kept so the keys stay equal.
    """

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([decoder_resblock(channels, channels) for _ in range(num_layers)])
        self.attentions = nn.ModuleList([mid_attention(channels)])

    def forward(self, x: torch.Tensor, num_frames: int | torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, None, num_frames)
        for resnet, attn in zip(self.resnets[1:], self.attentions):
            x = resnet(attn(x), None, num_frames)
        return x


class UpBlockTemporalDecoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                decoder_resblock(in_channels if i == 0 else out_channels, out_channels)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor, num_frames: int | torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, None, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class TemporalDecoder(nn.Module):
    """latents [F, latent, h, w] of one video -> frames [F, 3, H, W]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        n = len(rev)
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlockTemporalDecoder(rev[0], cfg.layers_per_block)
        self.up_blocks = nn.ModuleList(
            [
                UpBlockTemporalDecoder(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, i < n - 1)
                for i in range(n)
            ]
        )
        self.conv_norm_out = GroupNorm(GROUPS, rev[-1], eps=EPS)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        num_frames = z.shape[0]  # one video: every row of the batch is a frame
        x = self.mid_block(self.conv_in(z), num_frames)
        for block in self.up_blocks:
            x = block(x, num_frames)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return video_to_frames(frame_conv(self.time_conv_out, frames_to_video(x, num_frames)))


class TemporalVAE(nn.Module):
    """encode: image -> latent mean; decode: one chunk of latents -> frames. No latent scaling here."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.latent_channels = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.decoder = TemporalDecoder(cfg)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] -> mode of the posterior [B, latent, H/s, W/s] (unscaled)."""
        moments = self.quant_conv(self.encoder(image))
        return moments[:, : self.latent_channels]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [F, latent, h, w] (unscaled, one chunk of one video) -> frames [F, 3, H, W]."""
        return self.decoder(latents)
