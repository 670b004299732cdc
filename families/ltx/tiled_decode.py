"""Bounded-memory decoding of LTX latents: diffusers' AutoencoderKLLTXVideo tiled decode, around any decoder.

Spatial tiles (vae.enable_tiling(), `tiled_decode`): latent tiles of tile_min / ratio pixels every
tile_stride / ratio, each decoded alone; a tile's first (min - stride) sample rows and columns are
blended linearly with the tile above and the tile to its left (blend_v, blend_h, in place, row by row),
then each tile keeps its first stride x stride pixels. Temporal tiles (`_temporal_tiled_decode`, which
diffusers runs when `vae.use_framewise_decoding` is set): windows of min_frames / ratio + 1 latent
frames every stride / ratio; every window after the first drops its last decoded frame and blends its
first (min - stride) frames with the previous window's last ones (blend_t), keeping `stride` frames (the
first window stride + 1). Windows wider or taller than a tile are themselves decoded in spatial tiles.

Same arithmetic as diffusers: float32 weights (1 - y / e) and y / e, the same in-place order, so
the result equals diffusers' own tiled decode bit for bit given the same per-tile decoder outputs.
Only the previous row of tiles (or window) is held, where diffusers holds all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from svd_trt.errors import UserError

Decoder = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


class TilingError(UserError, ValueError):
    """Tile sizes that leave a latent tile or stride of zero."""


@dataclass(frozen=True)
class TileSizes:
    """In sample pixels / frames; the defaults are AutoencoderKLLTXVideo's."""

    min_height: int = 512
    min_width: int = 512
    min_num_frames: int = 16
    stride_height: int = 448
    stride_width: int = 448
    stride_num_frames: int = 8

    def check(self, spatial_ratio: int, temporal_ratio: int) -> None:
        """One line when a size or stride is below the VAE's ratio (a latent tile of 0) or a stride exceeds its tile."""
        for name, ratio in (
            ("min_height", spatial_ratio),
            ("min_width", spatial_ratio),
            ("stride_height", spatial_ratio),
            ("stride_width", spatial_ratio),
            ("min_num_frames", temporal_ratio),
            ("stride_num_frames", temporal_ratio),
        ):
            if getattr(self, name) < ratio:
                raise TilingError(f"tile {name}={getattr(self, name)} is below the VAE's ratio {ratio}")
        for axis in ("height", "width", "num_frames"):
            if getattr(self, f"stride_{axis}") > getattr(self, f"min_{axis}"):  # gaps between tiles
                raise TilingError(f"tile stride_{axis} is above min_{axis}: the tiles would leave gaps")


# ---------------------------------------------------------------- blends (in place on b, as diffusers)


def _weights(extent: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(1 - y / e, y / e) for y < e: Python-float values, rounded to the tiles' dtype as torch's scalar multiply."""
    y = np.arange(extent, dtype=np.float64)
    return (1 - y / extent).astype(dtype), (y / extent).astype(dtype)


def blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """b's first e rows := a's last e rows * (1 - y/e) + b's rows * y/e, [B, C, F, H, W]."""
    e = min(a.shape[3], b.shape[3], extent)
    if e > 0:
        wa, wb = _weights(e, b.dtype)
        b[:, :, :, :e] = a[:, :, :, -e:] * wa[:, None] + b[:, :, :, :e] * wb[:, None]
    return b


def blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """b's first e columns from a's last e columns, linearly (as blend_v)."""
    e = min(a.shape[4], b.shape[4], extent)
    if e > 0:
        wa, wb = _weights(e, b.dtype)
        b[..., :e] = a[..., -e:] * wa + b[..., :e] * wb
    return b


def blend_t(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """b's first e frames from a's last e frames, linearly (as blend_v)."""
    e = min(a.shape[2], b.shape[2], extent)
    if e > 0:
        wa, wb = _weights(e, b.dtype)
        b[:, :, :e] = a[:, :, -e:] * wa[:, None, None] + b[:, :, :e] * wb[:, None, None]
    return b


# ---------------------------------------------------------------- decoding


def _run(decode: Decoder, latents: np.ndarray, timestep: np.ndarray | None) -> np.ndarray:
    out = np.asarray(decode(np.ascontiguousarray(latents), timestep))
    return out if out.flags.writeable else out.copy()  # the blends write into it


def decode_spatial_tiles(
    decode: Decoder, latents: np.ndarray, timestep: np.ndarray | None, spatial_ratio: int, tiles: TileSizes
) -> np.ndarray:
    """diffusers' tiled_decode: [B, C, F', H', W'] -> [B, 3, F, H' * ratio, W' * ratio]."""
    h, w = latents.shape[3:]
    tile_h, tile_w = tiles.min_height // spatial_ratio, tiles.min_width // spatial_ratio
    step_h, step_w = tiles.stride_height // spatial_ratio, tiles.stride_width // spatial_ratio
    blend_height = tiles.min_height - tiles.stride_height
    blend_width = tiles.min_width - tiles.stride_width
    above: list[np.ndarray] = []
    out_rows = []
    for i in range(0, h, step_h):
        row = []
        for j in range(0, w, step_w):
            tile = _run(decode, latents[:, :, :, i : i + tile_h, j : j + tile_w], timestep)
            if above:
                tile = blend_v(above[len(row)], tile, blend_height)
            if row:
                tile = blend_h(row[-1], tile, blend_width)
            row.append(tile)
        out_rows.append(
            np.concatenate([t[:, :, :, : tiles.stride_height, : tiles.stride_width] for t in row], axis=4)
        )
        above = row
    return np.concatenate(out_rows, axis=3)[:, :, :, : h * spatial_ratio, : w * spatial_ratio]


def decode_temporal_tiles(
    decode: Decoder,
    latents: np.ndarray,
    timestep: np.ndarray | None,
    spatial_ratio: int,
    temporal_ratio: int,
    tiles: TileSizes,
    spatial: bool = True,
) -> np.ndarray:
    """diffusers' _temporal_tiled_decode: [B, C, F', H', W'] -> [B, 3, (F' - 1) * ratio + 1, H, W]."""
    f, h, w = latents.shape[2:]
    tile_f = tiles.min_num_frames // temporal_ratio
    step_f = tiles.stride_num_frames // temporal_ratio
    blend_frames = tiles.min_num_frames - tiles.stride_num_frames
    previous = None
    kept = []
    for i in range(0, f, step_f):
        window = latents[:, :, i : i + tile_f + 1]
        if spatial and (w > tiles.min_width // spatial_ratio or h > tiles.min_height // spatial_ratio):
            decoded = decode_spatial_tiles(decode, window, timestep, spatial_ratio, tiles)
        else:
            decoded = _run(decode, window, timestep)
        if previous is None:
            keep = decoded[:, :, : tiles.stride_num_frames + 1]
        else:
            decoded = blend_t(previous, decoded[:, :, :-1], blend_frames)
            keep = decoded[:, :, : tiles.stride_num_frames]
        kept.append(keep.copy())  # a view would keep its whole window alive: 2.1x the video at 17 / 8
        previous = decoded
    return np.concatenate(kept, axis=2)[:, :, : (f - 1) * temporal_ratio + 1]


def tiled_decode(
    decode: Decoder,
    latents: np.ndarray,
    timestep: np.ndarray | None,
    spatial_ratio: int,
    temporal_ratio: int,
    tiles: TileSizes = TileSizes(),
    spatial: bool = True,
    temporal: bool = True,
) -> np.ndarray:
    """AutoencoderKLLTXVideo.decode with tiling: [B, C, F', H', W'] -> frames [B, 3, F, H, W].

    decode(latents, timestep) -> frames: the whole-latent decoder (the vae_decoder engine), called on
    each tile with the same timestep ([B] float32, or None for a decoder without timestep conditioning).
    spatial: vae.enable_tiling(); temporal: vae.use_framewise_decoding. A latent no larger than one
    tile is decoded whole, as diffusers does.
    """
    tiles.check(spatial_ratio, temporal_ratio)
    f, h, w = latents.shape[2:]
    if temporal and f > tiles.min_num_frames // temporal_ratio:
        return decode_temporal_tiles(decode, latents, timestep, spatial_ratio, temporal_ratio, tiles, spatial)
    if spatial and (w > tiles.min_width // spatial_ratio or h > tiles.min_height // spatial_ratio):
        return decode_spatial_tiles(decode, latents, timestep, spatial_ratio, tiles)
    return _run(decode, latents, timestep)
