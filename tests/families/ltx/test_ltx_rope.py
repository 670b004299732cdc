"""RoPE cos/sin on the host against diffusers' LTXVideoRotaryPosEmbed, as LTXPipeline calls it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed

from svd_trt.families.ltx import rope

# (dim, F', H', W', frame_rate, temporal ratio, spatial ratio): the 2B model's inner dim on a small
# grid and on the default video (161 frames, 512x704); dims with dim % 6 of 0, 2, 4 and a tiny
# VAE's 4x/4x ratios; a float frame rate.
CASES = (
    (2048, 3, 4, 6, 25, 8, 32),
    (2048, 21, 16, 22, 25, 8, 32),
    (48, 2, 3, 4, 25, 8, 32),
    (32, 3, 5, 2, 24, 4, 4),
    (40, 5, 2, 3, 23.976, 4, 4),
    (4096, 2, 3, 3, 30, 8, 32),
)
ULP1 = 2.0**-23  # float32's unit roundoff times 2: one ulp at 1.0


def _diffusers(dim, f, h, w, frame_rate, tr, sr, batch=1, patch=1, patch_t=1):
    module = LTXVideoRotaryPosEmbed(dim, patch_size=patch, patch_size_t=patch_t)
    hidden = torch.zeros(batch, f * h * w, dim)
    cos, sin = module(hidden, f, h, w, (tr / frame_rate, sr, sr))
    return cos.numpy(), sin.numpy()


def _ours(dim, f, h, w, frame_rate, tr, sr, batch=1, patch=1, patch_t=1):
    return rope.rope_cos_sin(f, h, w, dim, frame_rate, tr, sr, batch, patch, patch_t)


def _torch_powers(theta, n):
    """diffusers' `theta ** torch.linspace(log(1, theta), log(theta, theta), n)`, this CPU's torch kernels."""
    return (
        theta ** torch.linspace(math.log(1.0, theta), math.log(theta, theta), n, dtype=torch.float32)
    ).numpy()


@pytest.mark.parametrize("case", CASES[:1] + CASES[2:])  # not the full-size grid: 4 s of float64 cos
def test_same_bits_with_the_same_pow_and_cos(case):
    """With torch's linspace and pow swapped into ours and our cos/sin swapped into diffusers, every
    other operation (positions, frequencies' scaling, angles, layout, padding) is the same IEEE
    float32 operation: bit-identical. Only those math kernels differ between the sides."""

    def as_ours(fn):
        def patched(self):
            return torch.from_numpy(fn(self.numpy()))

        return patched

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rope, "_powers", _torch_powers)
        mp.setattr(torch.Tensor, "cos", as_ours(lambda a: rope._cos_sin(a)[0]))
        mp.setattr(torch.Tensor, "sin", as_ours(lambda a: rope._cos_sin(a)[1]))
        ref = _diffusers(*case, batch=2)
        ours = _ours(*case, batch=2)
    for a, b in zip(ours, ref):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _angles(dim, f, h, w, frame_rate, tr, sr):
    """|angle| of each output channel [S, dim] (0 on the padding), from our float32 factors."""
    freqs = rope.frequencies(dim)
    grids = [
        rope.positions(size, scale, 1, base)
        for size, scale, base in zip((f, h, w), (tr / frame_rate, sr, sr), rope.BASE_GRID)
    ]
    ff, hh, ww = np.meshgrid(*grids, indexing="ij")
    p = np.stack([ff.ravel(), hh.ravel(), ww.ravel()], axis=-1)  # [S, 3]
    ang = np.abs(freqs[None, :, None] * p[:, None, :]).reshape(len(p), -1)  # [S, n * 3], k-major
    return np.concatenate([np.zeros((len(p), dim % 6)), np.repeat(ang, 2, axis=-1)], axis=-1)


@pytest.mark.parametrize("case", CASES)
def test_within_the_rounding_of_the_frequencies(case):
    """Our own linspace, pow and cos/sin against diffusers' torch kernels on this CPU.

    Bound per channel, from the rounding each side does (u = 2^-24, one ulp <= 2u relative):
    - exponent x_k: torch.linspace fused (ours, AVX2 / AVX-512) is within 1/2 ulp(x_k), unfused
      (torch's default path) within 1 ulp(x_k): at most 1.5 ulp(x_k) apart; the frequency
      theta^x moves by ln(theta) times that, relatively;
    - the power: torch's within 1 ulp (SLEEF u10 or a libm), ours 1/2 ulp; then both round the
      product by pi (1/2 ulp each) and by (2p - 1) (1/2 ulp each): 3.5 ulps <= 7u relative;
    - cos/sin are 1-Lipschitz and each side rounds within 1 ulp of [-1, 1]: 4u.
    |d| <= |angle| (ln(theta) 1.5 ulp(x_k) + 7u) + 4u, on any CPU whose torch kernels are within
    1 ulp; a wrong position, scale or layout is off by O(1).
    """
    u = 2.0**-24
    dim = case[0]
    x = np.linspace(0, 1, dim // 6, dtype=np.float32)
    rel = math.log(rope.THETA) * 1.5 * np.spacing(x).astype(np.float64) + 7 * u  # per frequency k
    rel = np.concatenate([np.zeros(dim % 6), np.repeat(np.repeat(rel, 3), 2)])  # channel order: k, axis, pair
    bound = _angles(*case) * rel + 4 * u
    cos_ref, sin_ref = _diffusers(*case)
    cos, sin = _ours(*case)
    for ours, ref in ((cos, cos_ref), (sin, sin_ref)):
        excess = np.abs(ours[0].astype(np.float64) - ref[0]) - bound
        assert excess.max() <= 0, f"max excess {excess.max():.3g}"


def test_golden_values():
    """Token 0 of the 2B model: position (0, 0, 0) -> angle -freq_k; the padding channels lead."""
    cos, sin = rope.rope_cos_sin(1, 1, 2, 2048, 25, 8, 32)
    assert cos.shape == sin.shape == (1, 2, 2048)
    np.testing.assert_array_equal(cos[0, :, :2], 1.0)
    np.testing.assert_array_equal(sin[0, :, :2], 0.0)
    freq0 = math.pi / 2  # theta^0 * pi / 2
    np.testing.assert_allclose(cos[0, 0, 2:8], math.cos(-freq0), atol=4 * ULP1)
    np.testing.assert_allclose(sin[0, 0, 2:8], math.sin(-freq0), atol=4 * ULP1)
    # token 1 moves along w only: the f and h channels of every frequency equal token 0's
    per_axis = cos[0].reshape(2, -1)[:, 2:].reshape(2, -1, 3, 2)
    np.testing.assert_array_equal(per_axis[0, :, :2], per_axis[1, :, :2])
    assert not np.array_equal(per_axis[0, :, 2], per_axis[1, :, 2])


def test_measured_difference_float32_against_float64():
    """Why float32 angles (docs/ltx-runtime.md): on the default video, diffusers' own float32 angles
    are closer to ours than exact (float64) angles are; the float64 path is off by ~1e-3 rad."""
    case = (2048, 21, 4, 5, 25, 8, 32)
    cos_ref, _ = _diffusers(*case)
    cos, _ = _ours(*case)
    d32 = np.abs(cos - cos_ref).max()
    # float64 positions and angles, rounded once at the end
    dim, f, h, w = case[:4]
    freqs = 10000.0 ** np.linspace(0, 1, dim // 6) * math.pi / 2
    grid = np.stack(np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3)
    p = grid * np.array([8 / 25 / 20, 32 / 2048, 32 / 2048])
    ang = (freqs[None, :, None] * (2 * p[:, None, :] - 1)).reshape(len(p), -1)
    cos64 = np.concatenate([np.ones((len(p), 2)), np.repeat(np.cos(ang), 2, -1)], -1).astype(np.float32)
    d64 = np.abs(cos64 - cos_ref[0]).max()
    assert d32 < d64
