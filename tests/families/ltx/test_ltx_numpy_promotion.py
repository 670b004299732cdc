"""The LTX host math computes the same under numpy 1.x's value-based promotion and numpy 2's NEP 50
(the serve extra pins numpy < 2; tests/conftest.py runs the diffusers reference under NEP 50)."""

from __future__ import annotations

import numpy as np
import pytest

from svd_trt.families.ltx import latents as lat
from svd_trt.families.ltx import rope
from svd_trt.families.ltx import tiled_decode as td

pytestmark = pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) >= "2.0.0", reason="numpy >= 2 has only NEP 50 promotion"
)


def _under_both(run):
    results = []
    for state in ("legacy", "weak"):
        previous = np._get_promotion_state()
        np._set_promotion_state(state)
        try:
            results.append(run())
        finally:
            np._set_promotion_state(previous)
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_rope():
    _under_both(lambda: rope.rope_cos_sin(3, 4, 5, 64, 23.976, 8, 32, batch_size=2))


def test_latents():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 4, 3, 2, 5), dtype=np.float32)
    noise = rng.standard_normal(z.shape, dtype=np.float32)
    v = rng.standard_normal((4, 30, 4), dtype=np.float32)
    mean, std = rng.standard_normal(4), rng.random(4) + 0.5

    def run():
        image = lat.normalize(
            lat.posterior_sample(z[:1, :, :1], z[:1, :, :1] ** 2, noise[:1, :, :1]), mean, std
        )
        x, mask = lat.image_to_video_latents(image, noise)
        t = lat.token_timesteps(np.float32(937.5), 2, 30, mask)
        guided = lat.guide(v, 3.5, 0.7)
        stepped = lat.step_after_first_frame(guided, x, 0.9375, 0.5, (3, 2, 5))
        decoded, temb = lat.decode_inputs(lat.denormalize(z, mean, std, 0.7), noise, 0.05, 0.025)
        return x, mask, t, guided, stepped, decoded, temb, lat.frames(z[:, :3])

    _under_both(run)


def test_tiled_decode():
    z = np.random.default_rng(1).standard_normal((1, 3, 4, 10, 9), dtype=np.float32)
    tiles = td.TileSizes(32, 32, 8, 24, 24, 4)

    def decode(x, t):  # a stand-in decoder: 4x nearest upsampling, causal in time
        up = x.repeat(4, axis=3).repeat(4, axis=4)
        return np.concatenate([up[:, :, :1], up[:, :, 1:].repeat(4, axis=2)], axis=2) * np.float32(0.9)

    _under_both(lambda: (td.tiled_decode(decode, z, None, 4, 4, tiles),))
