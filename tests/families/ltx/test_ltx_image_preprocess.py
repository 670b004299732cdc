"""The image-to-video input against diffusers' VideoProcessor, as LTXImageToVideoPipeline uses it
(vae_scale_factor = the VAE's spatial ratio; the pipeline adds the frame axis). Both sides resize with
the same Pillow call and then do the same float32 operations: bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.video_processor import VideoProcessor
from PIL import Image

from svd_trt.families.ltx.image_preprocess import video_pixel_values


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: Lanczos' ringing and clipping both show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "image_size, video_size, ratio",
    (
        ((41, 27), (32, 64), 4),  # upscaled, another aspect (tiny VAE)
        ((1000, 600), (512, 704), 32),  # downscaled to LTX's default size (real VAE)
        ((704, 512), (512, 704), 32),  # already the video's size: still resampled, as diffusers does
        ((300, 500), (100, 70), 32),  # sizes not multiples of the ratio: rounded down to 96 x 64
    ),
)
def test_video_pixel_values_are_video_processor(image_size, video_size, ratio):
    image = _photo(*image_size)
    height, width = video_size
    ref = VideoProcessor(vae_scale_factor=ratio).preprocess(image, height=height, width=width)
    ref = ref.unsqueeze(2).numpy()  # the pipeline's img.unsqueeze(0).unsqueeze(2) of each image
    ours = video_pixel_values(image, height, width, ratio)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.shape == (1, 3, 1, height - height % ratio, width - width % ratio)
    np.testing.assert_array_equal(ours, ref)
