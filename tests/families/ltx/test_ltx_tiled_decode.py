"""Tiled decoding against diffusers' own (AutoencoderKLLTXVideo with enable_tiling and framewise decoding).

Our tiling wraps the same diffusers decoder (vae.decoder, called per tile as diffusers calls it), so
only the tiling and blending are compared: bit for bit, since both sides blend with the same float32
multiplies and adds in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ltx_runtime_models import LATENT_CHANNELS, one_torch_thread, tiny_vae

from svd_trt.families.ltx import tiled_decode as td

SPATIAL = TEMPORAL = 4  # the tiny VAE's ratios
# Small tiles for the tiny VAE: 8x8 latent tiles every 6 (8 pixel rows and columns blended),
# windows of 2 + 1 latent frames every latent frame (4 frames blended).
SMALL = td.TileSizes(
    min_height=32, min_width=32, min_num_frames=8, stride_height=24, stride_width=24, stride_num_frames=4
)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _decoder(vae):
    def decode(latents, timestep):
        with torch.no_grad():
            t = None if timestep is None else torch.from_numpy(timestep)
            return vae.decoder(torch.from_numpy(latents), t).numpy()

    return decode


def _diffusers(vae, z, temb, tiles, spatial, temporal):
    if spatial:
        vae.enable_tiling(
            tile_sample_min_height=tiles.min_height,
            tile_sample_min_width=tiles.min_width,
            tile_sample_min_num_frames=tiles.min_num_frames,
            tile_sample_stride_height=tiles.stride_height,
            tile_sample_stride_width=tiles.stride_width,
            tile_sample_stride_num_frames=tiles.stride_num_frames,
        )
    else:
        vae.disable_tiling()
    vae.use_framewise_decoding = temporal
    if temporal and not spatial:  # enable_tiling() is also where diffusers takes the temporal sizes
        vae.tile_sample_min_num_frames = tiles.min_num_frames
        vae.tile_sample_stride_num_frames = tiles.stride_num_frames
    with torch.no_grad():
        t = None if temb is None else torch.from_numpy(temb)
        return vae.decode(torch.from_numpy(z), t).sample.numpy()


# (latent [B, C, F', H', W'], spatial, temporal, timestep-conditioned decoder):
# spatial tiles only (3 x 3 tiles with a ragged last row/column); temporal windows only;
# both (windows wider than a tile are decoded in tiles), batch 2 and a timestep; too small to tile.
CASES = (
    ((1, LATENT_CHANNELS, 2, 13, 14), True, False, False),
    ((1, LATENT_CHANNELS, 5, 6, 7), False, True, True),
    ((2, LATENT_CHANNELS, 3, 10, 9), True, True, True),
    ((1, LATENT_CHANNELS, 2, 8, 8), True, True, False),
)


@pytest.mark.parametrize("shape, spatial, temporal, conditioned", CASES)
def test_tiled_decode_is_diffusers(shape, spatial, temporal, conditioned):
    vae = tiny_vae(timestep_conditioning=conditioned)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape, dtype=np.float32)
    temb = np.full(shape[0], 0.05, np.float32) if conditioned else None
    ref = _diffusers(vae, z, temb, SMALL, spatial, temporal)
    ours = td.tiled_decode(_decoder(vae), z, temb, SPATIAL, TEMPORAL, SMALL, spatial, temporal)
    assert ours.shape == ref.shape == (shape[0], 3, (shape[2] - 1) * TEMPORAL + 1, shape[3] * 4, shape[4] * 4)
    np.testing.assert_array_equal(ours, ref)


def test_tiled_close_to_untiled_where_diffusers_is():
    """Tiling changes the frames near tile seams (each tile sees less context); ours by exactly as much
    as diffusers' own tiled decode, which the equality above implies, measured here for the docs."""
    vae = tiny_vae()
    z = np.random.default_rng(1).standard_normal((1, LATENT_CHANNELS, 3, 10, 9), dtype=np.float32)
    whole = _diffusers(vae, z, None, SMALL, spatial=False, temporal=False)
    ref = _diffusers(vae, z, None, SMALL, spatial=True, temporal=True)
    ours = td.tiled_decode(_decoder(vae), z, None, SPATIAL, TEMPORAL, SMALL)
    assert np.abs(ours - whole).max() == np.abs(ref - whole).max()


def test_default_tile_sizes_are_diffusers():
    vae = tiny_vae()
    d = td.TileSizes()
    assert (d.min_height, d.min_width, d.min_num_frames) == (
        vae.tile_sample_min_height,
        vae.tile_sample_min_width,
        vae.tile_sample_min_num_frames,
    )
    assert (d.stride_height, d.stride_width, d.stride_num_frames) == (
        vae.tile_sample_stride_height,
        vae.tile_sample_stride_width,
        vae.tile_sample_stride_num_frames,
    )


def test_tiles_below_the_ratio_are_refused():
    tiles = td.TileSizes(min_height=32, min_width=32, stride_height=2, stride_width=24)
    with pytest.raises(td.TilingError, match="stride_height=2 is below the VAE's ratio 4"):
        td.tiled_decode(lambda z, t: z, np.zeros((1, 8, 1, 9, 9), np.float32), None, 4, 4, tiles)
    gaps = td.TileSizes(min_height=32, min_width=32, stride_height=24, stride_width=40)
    with pytest.raises(td.TilingError, match="stride_width is above min_width"):
        td.tiled_decode(lambda z, t: z, np.zeros((1, 8, 1, 9, 9), np.float32), None, 4, 4, gaps)
