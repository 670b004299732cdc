"""Tiny random LTX components built with diffusers' classes (diffusers' own fast-test sizes), for the
numpy runtime's parity tests; and a recorder of a module's calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

LATENT_CHANNELS = 8
CAPTION_CHANNELS = 32


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The models are tiny: on a shared 2-core machine torch's second thread costs 10x in contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_vae(timestep_conditioning: bool = False, seed: int = 0) -> AutoencoderKLLTXVideo:
    """4x spatial, 4x temporal, 8 latent channels; float32, eval mode."""
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=timestep_conditioning,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    # non-trivial normalization statistics, so normalize/denormalize are exercised
    vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, LATENT_CHANNELS))
    vae.latents_std.copy_(torch.linspace(0.5, 2.0, LATENT_CHANNELS))
    return vae.eval()


def tiny_transformer(seed: int = 0) -> LTXVideoTransformer3DModel:
    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=CAPTION_CHANNELS,
    ).eval()


class Recorder:
    """Wraps module.<method> (forward by default): records each call's inputs and its output."""

    def __init__(self, module: torch.nn.Module, method: str = "forward"):
        self.calls: list[tuple[tuple, dict, object]] = []
        self._wrapped = getattr(module, method)
        setattr(module, method, self)

    def __call__(self, *args, **kwargs):
        out = self._wrapped(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out
