"""CLIP preprocessing against diffusers' `_resize_with_antialiasing` and the pipeline's `_encode_image` steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from diffusers.video_processor import VideoProcessor
from PIL import Image
from transformers import CLIPImageProcessor

from svd_trt.families.svd import clip_preprocess as cp
from svd_trt.families.svd.config import FeatureExtractorConfig

# larger, smaller and straddling 224; square and not; 1080p is the largest blur kernel here (15 x 7)
SIZES = [(576, 1024), (300, 200), (100, 150), (224, 224), (225, 223), (1080, 1920), (20, 30), (2, 2)]
# Values in [-1, 1]. Measured max error 3.6e-7 (3 float32 ulp at 1): our composite blur+bicubic
# weights are rounded once and summed in another order than torch's conv2d and interpolate.
# We assert 1e-6 (3x headroom), 10x tighter than the 1e-5 budget.
RESIZE_ATOL = 1e-6


def _image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Noise plus a smooth ramp: high frequencies exercise the blur, the ramp the bicubic."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ramp = np.add.outer(np.linspace(0, 150, h), np.linspace(0, 100, w))[..., None]
    return np.clip(ramp + rng.integers(0, 106, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", SIZES)
def test_resize_matches_diffusers(shape):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (1, 3, *shape)).astype(np.float32)
    ref = _resize_with_antialiasing(torch.from_numpy(x), (224, 224)).numpy()
    ours = cp.resize_with_antialiasing(x, (224, 224))
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= RESIZE_ATOL


@pytest.mark.parametrize("size", [(64, 96), (100, 30)])
def test_resize_other_targets_and_batch(size):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 300, 410)).astype(np.float32)
    ref = _resize_with_antialiasing(torch.from_numpy(x), size).numpy()
    ours = cp.resize_with_antialiasing(x, size)
    assert np.abs(ours - ref).max() <= RESIZE_ATOL


def test_resize_channels_last_axes():
    x = np.random.default_rng(3).uniform(-1, 1, (3, 130, 170)).astype(np.float32)
    nhwc = cp.resize_with_antialiasing(x.transpose(1, 2, 0), (224, 224), axes=(0, 1))
    np.testing.assert_array_equal(nhwc.transpose(2, 0, 1), cp.resize_with_antialiasing(x, (224, 224)))


def test_bicubic_weights_match_torch():
    """Interpolating an identity matrix along W reads torch's weights out directly."""
    n = 37
    eye = torch.eye(n).reshape(1, 1, n, n)
    ref = torch.nn.functional.interpolate(eye, size=(n, 224), mode="bicubic", align_corners=True)
    ref = ref[0, 0].numpy()
    index, weights = cp.cubic_weights(n, 224)
    ours = np.zeros((n, 224), np.float32)
    for k in range(4):
        np.add.at(ours, (index[k], np.arange(224)), weights[k])
    # bit-identical on torch's x86 build (its FMAs emulated); another build may contract
    # differently, which moves a weight by <= 7e-7 (cancellation in the outer cubic lobe)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def _pipeline_pixels(image: Image.Image) -> np.ndarray:
    """StableVideoDiffusionPipeline._encode_image up to the image encoder, verbatim."""
    processor = VideoProcessor(do_resize=True, vae_scale_factor=8)
    x = processor.numpy_to_pt(processor.pil_to_numpy(image))
    x = x * 2.0 - 1.0
    x = _resize_with_antialiasing(x, (224, 224))
    x = (x + 1.0) / 2.0
    # what the checkpoint's feature_extractor loads as (without torchvision transformers falls
    # back to its PIL backend; both compute (x - mean) / std in float32)
    fe = CLIPImageProcessor.from_dict(FeatureExtractorConfig().to_dict())
    flags = {"do_normalize": True, "do_center_crop": False, "do_resize": False, "do_rescale": False}
    out = fe(images=x, **flags, return_tensors="pt")
    return out.pixel_values.numpy()


@pytest.mark.parametrize("shape", [(576, 1024), (300, 200), (100, 150), (224, 224)])
def test_clip_pixel_values_match_pipeline(shape):
    image = Image.fromarray(_image(shape))
    ours = cp.clip_pixel_values(image, FeatureExtractorConfig(), 224)
    ref = _pipeline_pixels(image)
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    # the resize error (<= 3.6e-7) is divided by std (>= 0.26): measured <= 1e-6 on values up to 2.2
    assert np.abs(ours - ref).max() <= 1e-5


def test_clip_pixel_values_accepts_arrays_and_converts_modes():
    pixels = _image((90, 120), seed=4)
    rgb = cp.clip_pixel_values(Image.fromarray(pixels))
    np.testing.assert_array_equal(cp.clip_pixel_values(pixels), rgb)
    rgba = Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]))
    np.testing.assert_array_equal(cp.clip_pixel_values(rgba), rgb)


@pytest.mark.parametrize(
    "pixels, match",
    [
        (np.zeros((10, 10), np.uint8), "uint8"),
        (np.zeros((10, 10, 4), np.uint8), "uint8"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((1, 10, 3), np.uint8), "too small"),
    ],
)
def test_clip_pixel_values_rejects_bad_images(pixels, match):
    with pytest.raises(ValueError, match=match):
        cp.clip_pixel_values(pixels)
