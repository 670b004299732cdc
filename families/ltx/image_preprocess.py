"""The image of image to video as LTXImageToVideoPipeline feeds the VAE encoder.

VideoProcessor(vae_scale_factor=spatial_ratio).preprocess(image, height, width): Lanczos resize
(PIL.Image.Resampling.LANCZOS, no reducing_gap) to (W, H) rounded down to multiples of the spatial
ratio, whatever the image's own size and aspect, then 2 * pixels / 255 - 1; the pipeline adds the
frame axis. The shared VAE-path preprocessing (svd_trt.runtime.image_preprocess) is that function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from svd_trt.runtime.image_preprocess import vae_pixel_values


def video_pixel_values(image: Image.Image, height: int, width: int, spatial_ratio: int) -> np.ndarray:
    """PIL image -> the vae_encoder's `image` [1, 3, 1, H, W] float32 in [-1, 1]."""
    return vae_pixel_values(image, height, width, spatial_ratio)[:, :, None]
