"""The causal video VAE port against diffusers' AutoencoderKLLTXVideo, loaded from a saved snapshot:
the posterior (mean, std) of encode and the frames of decode, at several frame counts and sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import rel_err
from ltx_reference import reference_pipeline, reference_vae, save_snapshot

from svd_trt.families.ltx.config import VAEConfig, preset
from svd_trt.families.ltx.port.checkpoint import load_component
from svd_trt.families.ltx.port.vae import LTXVideoVAE

# fp32 vs fp32 on identical weights: the same convolutions (oneDNN picks the same algorithm for the
# same shapes), RMS norms reduced over channels in place of after a movedim, ~1e-7 relative per op
# through ~10 resnets; measured <= 2e-6 of the output scale. 1e-5 keeps a 5x margin and fails a
# wrong padding side, depth-to-space order or eps (all ~1e-1..1e-2) by orders of magnitude.
VAE_TOL = 1e-5

# (batch, latent frames, latent height, latent width): one image (i2v), a video, a tall one
SHAPES = [(1, 1, 2, 3), (2, 2, 1, 2), (1, 3, 2, 1)]

# LTX-Video 0.9.1's decoder layout (timestep-conditioned, residual depth-to-space) on the 0.9.0
# encoder, noise injection off, tiny; and a causal decoder.
V091 = dataclasses.replace(
    preset("tiny").vae,
    decoder_block_out_channels=(16, 32),
    decoder_layers_per_block=(1, 1, 1),
    decoder_spatio_temporal_scaling=(True, True),
    decoder_inject_noise=(False,) * 3,
    upsample_residual=(True, True),
    upsample_factor=(2, 2),
    timestep_conditioning=True,
)
CAUSAL_DECODER = dataclasses.replace(preset("tiny").vae, decoder_causal=True, encoder_causal=False)


@pytest.fixture(scope="module", params=["tiny", "tiny-32x8"])
def snapshot(request, tmp_path_factory):
    cfg = preset(request.param)
    pipe = reference_pipeline(cfg)
    return cfg.vae, pipe.vae, save_snapshot(pipe, tmp_path_factory.mktemp(f"ltx-{request.param}"))


def _compare(
    cfg: VAEConfig, ref, ours, batch: int, f: int, h: int, w: int, seed: int = 1
) -> tuple[float, ...]:
    g = torch.Generator().manual_seed(seed)
    s, r = cfg.spatial_ratio, cfg.temporal_ratio
    video = torch.rand(batch, 3, (f - 1) * r + 1, h * s, w * s, generator=g) * 2 - 1
    latents = torch.randn(batch, cfg.latent_channels, f, h, w, generator=g)
    timestep = torch.rand(batch, generator=g) * 0.1 if cfg.timestep_conditioning else None
    with torch.no_grad():
        posterior = ref.encode(video).latent_dist
        mean, std = ours.encode(video)
        expected = ref.decode(latents, timestep, return_dict=False)[0]
        frames = ours.decode(latents, timestep)
    assert mean.shape == std.shape == latents.shape
    assert frames.shape == video.shape
    return rel_err(mean, posterior.mean), rel_err(std, posterior.std), rel_err(frames, expected)


@pytest.mark.parametrize("batch,f,h,w", SHAPES)
def test_encode_and_decode_match_diffusers(snapshot, batch: int, f: int, h: int, w: int) -> None:
    cfg, ref, path = snapshot
    ours = load_component(path, "vae")
    errs = _compare(cfg, ref, ours, batch, f, h, w)
    print(f"vae {cfg.spatial_ratio}x/{cfg.temporal_ratio}x B={batch} f={f} h={h} w={w}: rel errs {errs}")
    assert max(errs) <= VAE_TOL


@pytest.mark.parametrize("cfg", [V091, CAUSAL_DECODER], ids=["0.9.1-layout", "causal-decoder"])
def test_other_layouts_match_diffusers(cfg: VAEConfig) -> None:
    ref = reference_vae(cfg)
    ours = LTXVideoVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert max(_compare(cfg, ref, ours, 2, 2, 2, 3)) <= VAE_TOL


def test_timestep_conditions_the_decoder(snapshot) -> None:
    cfg, _, path = snapshot
    if not cfg.timestep_conditioning:
        pytest.skip("a plain decoder takes no timestep")
    ours = load_component(path, "vae")
    latents = torch.randn(1, cfg.latent_channels, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = ours.decode(latents, torch.tensor([0.0])), ours.decode(latents, torch.tensor([0.05]))
    assert rel_err(a, b) > 1e-3


def test_latent_statistics_load_as_buffers(snapshot) -> None:
    """latents_mean / latents_std (the host's normalization) are read strictly with the weights."""
    _, ref, path = snapshot
    ours = load_component(path, "vae")
    assert torch.equal(ours.latents_mean, ref.latents_mean) and torch.equal(ours.latents_std, ref.latents_std)
    assert not torch.equal(ours.latents_std, torch.ones_like(ours.latents_std))


# diffusers' rearrangements, as autoencoder_kl_ltx.py writes them (one rank-8 permute each)
def _diffusers_depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    b, c, f, h, w = x.shape
    x = x.reshape(b, -1, *stride, f, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _diffusers_space_to_depth(x: torch.Tensor, stride: tuple[int, int, int], w_first: bool) -> torch.Tensor:
    b, c, f, h, w = x.shape
    s0, s1, s2 = stride
    x = x.reshape(b, c, f // s0, s0, h // s1, s1, w // s2, s2)
    # downsampler: (C, s0, s_h, s_w); encoder patchify: (C, pt, p_w, p_h)
    return x.permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4) if w_first else x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(1, 4)


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1), (1, 4, 4), (3, 2, 4)])
def test_rearrangements_are_diffusers_exactly(stride):
    """The one-factor-at-a-time rearrangements move the same elements as diffusers' rank-8 permutes:
    equal bit for bit (a permutation rounds nothing)."""
    from svd_trt.families.ltx.port.vae import depth_to_space, space_to_depth

    volume = stride[0] * stride[1] * stride[2]
    x = torch.randn(2, 3 * volume, 2, 3, 5)
    assert torch.equal(depth_to_space(x, stride), _diffusers_depth_to_space(x, stride))
    y = torch.randn(2, 3, 2 * stride[0], 3 * stride[1], 5 * stride[2])
    for w_first in (False, True):
        if w_first and stride[1] != stride[2]:
            continue  # patchify's p_w, p_h are one patch size
        assert torch.equal(space_to_depth(y, stride, w_first), _diffusers_space_to_depth(y, stride, w_first))
