"""The DiT port against diffusers' LTXVideoTransformer3DModel, loaded from a saved snapshot, with
RoPE cos/sin from diffusers' own LTXVideoRotaryPosEmbed (the host's job, fed to the port)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import rel_err
from ltx_reference import reference_pipeline, reference_transformer, rope, save_snapshot

from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.port.checkpoint import load_component
from svd_trt.families.ltx.port.transformer import LTXVideoTransformer3D

# fp32 vs fp32 on identical weights and RoPE tables: only reduction order differs (SDPA vs our
# attention, the written-out RMS norms), ~1e-7 relative per op; measured <= 3e-7 of the output
# scale. 1e-5 keeps a 30x margin and fails a wrong sign in the rotation, a missing mask bias or
# a swapped modulation term by orders of magnitude.
DIT_TOL = 1e-5

# (batch, latent frames, height, width, text tokens, padded text tokens)
SHAPES = [(1, 1, 2, 3, 1, 0), (2, 3, 4, 5, 7, 3), (2, 2, 3, 2, 12, 11)]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    cfg = preset("tiny")
    pipe = reference_pipeline(cfg)
    return cfg, pipe.transformer, save_snapshot(pipe, tmp_path_factory.mktemp("ltx-tiny"))


def _inputs(cfg, batch, frames, height, width, length, padded, seed=1):
    g = torch.Generator().manual_seed(seed)
    tc = cfg.transformer
    tokens = frames * height * width
    x = torch.randn(batch, tokens, tc.in_channels, generator=g)
    context = torch.randn(batch, length, tc.caption_channels, generator=g)
    mask = torch.ones(batch, length)
    mask[-1, length - padded :] = 0  # the last prompt is shorter: its padding masked
    t = torch.rand(batch, generator=g) * 1000
    return x, context, t, mask


@pytest.mark.parametrize("batch,frames,height,width,length,padded", SHAPES)
def test_text_to_video_step_matches_diffusers(snapshot, batch, frames, height, width, length, padded) -> None:
    """diffusers gets t [B] (one per sample, as LTXPipeline); the port the same t per token [B, S]."""
    cfg, ref, path = snapshot
    ours = load_component(path, "transformer")
    x, context, t, mask = _inputs(cfg, batch, frames, height, width, length, padded)
    cos, sin = rope(ref, x, frames, height, width, cfg)
    scale = (cfg.temporal_ratio / 25, cfg.spatial_ratio, cfg.spatial_ratio)
    with torch.no_grad():
        expected = ref(x, context, t, mask, frames, height, width, scale, return_dict=False)[0]
        got = ours(x, context, t[:, None].expand(-1, x.shape[1]), mask, cos, sin)
    assert got.shape == (batch, x.shape[1], cfg.transformer.out_channels)
    err = rel_err(got, expected)
    print(f"dit B={batch} f={frames} h={height} w={width} L={length}: rel err {err:.2e}")
    assert err <= DIT_TOL


def test_image_to_video_per_token_timestep_matches_diffusers(snapshot) -> None:
    """LTXImageToVideoPipeline's timestep t * (1 - mask): frame 0's tokens at 0, the rest at t."""
    cfg, ref, path = snapshot
    ours = load_component(path, "transformer")
    frames, height, width = 3, 2, 4
    x, context, t, mask = _inputs(cfg, 2, frames, height, width, 9, 4, seed=2)
    conditioning = torch.zeros(2, frames, height, width)
    conditioning[:, 0] = 1.0
    timestep = t[:, None] * (1 - conditioning.flatten(1))
    cos, sin = rope(ref, x, frames, height, width, cfg)
    scale = (cfg.temporal_ratio / 25, cfg.spatial_ratio, cfg.spatial_ratio)
    with torch.no_grad():
        expected = ref(x, context, timestep, mask, frames, height, width, scale, return_dict=False)[0]
        got = ours(x, context, timestep, mask, cos, sin)
    assert rel_err(got, expected) <= DIT_TOL


def test_affine_norms_and_exact_gelu() -> None:
    """Config switches LTX-Video 2B leaves off: elementwise-affine block norms, erf GELU, 2 layers,
    an inner dim divisible by 6 (no RoPE padding)."""
    tc = dataclasses.replace(
        preset("tiny").transformer,
        norm_elementwise_affine=True,
        activation_fn="gelu",
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=12,
        cross_attention_dim=24,
    )
    cfg = dataclasses.replace(preset("tiny"), transformer=tc)
    ref = reference_transformer(tc)
    ours = LTXVideoTransformer3D(tc).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, context, t, mask = _inputs(cfg, 2, 2, 3, 3, 5, 2)
    cos, sin = rope(ref, x, 2, 3, 3, cfg)
    scale = (cfg.temporal_ratio / 25, cfg.spatial_ratio, cfg.spatial_ratio)
    with torch.no_grad():
        expected = ref(x, context, t, mask, 2, 3, 3, scale, return_dict=False)[0]
        got = ours(x, context, t[:, None].expand(-1, x.shape[1]), mask, cos, sin)
    assert rel_err(got, expected) <= DIT_TOL


def test_mask_and_rope_change_the_output(snapshot) -> None:
    """The inputs the host computes are used: a different mask or RoPE table changes noise_pred."""
    cfg, ref, path = snapshot
    ours = load_component(path, "transformer")
    x, context, t, mask = _inputs(cfg, 1, 2, 2, 2, 6, 0)
    cos, sin = rope(ref, x, 2, 2, 2, cfg)
    ts = t[:, None].expand(-1, x.shape[1])
    with torch.no_grad():
        base = ours(x, context, ts, mask, cos, sin)
        masked = mask.clone()
        masked[:, 3:] = 0
        assert rel_err(ours(x, context, ts, masked, cos, sin), base) > 1e-3
        assert rel_err(ours(x, context, ts, mask, cos.flip(1), sin.flip(1)), base) > 1e-3
