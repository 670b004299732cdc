"""LTX-Video's rotary position embedding on the host: cos/sin [B, S, dim] as LTXVideoRotaryPosEmbed returns them.

Token s = (f, h, w), row-major over the latent grid [F', H', W'], has the position
    p = (f * temporal_ratio / frame_rate * patch_t / 20, h * spatial_ratio * patch / 2048, w * ... / 2048),
the pipeline's rope_interpolation_scale over the base grid (20, 2048, 2048). With
freq_k = theta^(k / (n - 1)) * pi / 2 for k < n = dim // 6, the angles are freq_k * (2 p_axis - 1),
laid out k-major, axis-minor ([.., k, axis] flattened), each repeated twice (interleaved pairs), with
dim % 6 leading channels of cos 1 / sin 0.

Angles reach theta * pi / 2 ~ 1.6e4 rad, so one float32 ulp of a frequency moves them by ~1e-3:
the arithmetic is float32, in diffusers' order, so the angles are diffusers' bits given the same
frequencies. diffusers' frequencies themselves differ between CPUs: torch.linspace fuses its
multiply-adds on AVX2 / AVX-512 (and CUDA) but not on its default path, and torch's float32 pow
(SLEEF u10) mis-rounds some near-ties. Ours are the fused linspace and a correctly rounded power:
within 2.5e-4 of diffusers on AVX2 / AVX-512 at the default video size, where diffusers' default
CPU path is itself 1.9e-3 away (docs/ltx-runtime.md). cos and sin are the float64 functions of the
float32 angles, rounded to float32.
"""

from __future__ import annotations

import math

import numpy as np

from svd_trt.runtime.torch_math import linspace_f32

F32 = np.float32
BASE_GRID = (20, 2048, 2048)  # LTXVideoTransformer3DModel's base_num_frames, base_height, base_width
THETA = 10000.0


def _powers(theta: float, n: int) -> np.ndarray:
    """theta ** torch.linspace(0, 1, n) in float32 (tests swap in torch's own).

    The exponents are torch.linspace's bits where it fuses multiply-adds (x86 AVX2 / AVX-512, CUDA);
    the power is correctly rounded.
    """
    exponents = linspace_f32(math.log(1.0, theta), math.log(theta, theta), n)
    return (np.float64(F32(theta)) ** exponents.astype(np.float64)).astype(F32)


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of float32 angles, from float64, rounded to float32 (tests swap in torch's)."""
    a = angles.astype(np.float64)
    return np.cos(a).astype(F32), np.sin(a).astype(F32)


def frequencies(dim: int, theta: float = THETA) -> np.ndarray:
    """theta ** linspace(0, 1, dim // 6) * pi / 2, float32 [dim // 6] (torch.linspace's bits)."""
    return _powers(theta, dim // 6) * F32(math.pi) / F32(2.0)


def positions(size: int, scale: float, patch: int, base: int) -> np.ndarray:
    """One axis' positions 2 * (i * scale * patch / base) - 1 for i < size, float32 [size], diffusers' order."""
    grid = np.arange(size, dtype=F32) * F32(scale) * F32(patch) / F32(base)
    return grid * F32(2) - F32(1)


def rope_cos_sin(
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    dim: int,
    frame_rate: float,
    temporal_ratio: int,
    spatial_ratio: int,
    batch_size: int = 1,
    patch_size: int = 1,
    patch_size_t: int = 1,
    theta: float = THETA,
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [B, F' * H' * W', dim] float32 for the transformer's `rope_cos` / `rope_sin` inputs.

    dim: the transformer's inner dim (heads * head_dim). The grid is the latent grid the pipeline
    passes (equal to the token grid for LTX's patch sizes of 1). temporal_ratio / frame_rate is the
    pipeline's rope_interpolation_scale[0], computed in Python floats as there.
    """
    scales = (temporal_ratio / frame_rate, spatial_ratio, spatial_ratio)
    patches = (patch_size_t, patch_size, patch_size)
    sizes = (latent_frames, latent_height, latent_width)
    freqs = frequencies(dim, theta)
    # The angle of (token, k, axis) depends on the token only through its coordinate on that axis:
    # tables [size_axis, n] of cos/sin, gathered to the tokens, are the same bits as per-token angles.
    tables = [
        _cos_sin(freqs * positions(size, scale, patch, base)[:, None])
        for size, scale, patch, base in zip(sizes, scales, patches, BASE_GRID)
    ]
    n, pad = dim // 6, dim % 6
    out = []
    for which, fill in ((0, 1.0), (1, 0.0)):  # cos, padded with ones; sin, padded with zeros
        row = np.empty((*sizes, dim), F32)
        row[..., :pad] = fill
        pairs = row[..., pad:].reshape(*sizes, n, 3, 2)  # a view: channel pad + 6k + 2 axis + (0 | 1)
        for axis, table in enumerate(tables):
            along = [1, 1, 1, n]
            along[axis] = sizes[axis]
            pairs[..., axis, :] = table[which].reshape(along)[..., None]
        row = row.reshape(1, -1, dim)
        out.append(row if batch_size == 1 else np.repeat(row, batch_size, axis=0))
    return out[0], out[1]
