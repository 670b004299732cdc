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
U = 2.0**-24  # float32 unit roundoff: one rounding moves x by <= U|x|
# Keys' cubic weights against exact, by Horner (each rounding carried by the later multiplications by x):
# conv2 (1 <= x < 2, the outer taps) U (|Ax| x^2 + |p1| x^2 + |p1 x| x + |p2| x + |p2 x| + |w|)
# <= U (1.5 * 4 + 3 * 4 + 6 * 2 + 3 * 2 + 6 + 0.1) = 42.1U in plain float32 (ATen's default kernel), 24.1U
# with its two multiply-adds fused (ATen's AVX2/AVX-512 kernels, ours); conv1 (x <= 1) <= 9U either way.
# So ours and torch's differ by <= 66.2U on an outer weight, 18U on an inner one, whichever kernel runs.
CUBIC_OUTER, CUBIC_INNER = 66.2 * U, 18 * U


def _resize_bound(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    """Worst-case |ours - diffusers'| for inputs in [-1, 1], first order.

    Both compute y = C_h C_w B_h B_w x: B a Gaussian blur (weights >= 0 summing to 1), C bicubic (each
    output's sum of |weight| is L, read off cubic_weights). A float32 sum of n terms is off by at most
    nU sum|term|. Per side: the blur's normalised weights (exp within 1 ulp, its argument's two
    roundings, at most U/e absolute as a e^-a <= 1/e, the sum and division) <= (2K + 4)U in sum; torch
    sums K taps per blur and 4 per bicubic pass; ours sums T taps per axis of the composite operator,
    each weight rounded once. The bicubic weights add CUBIC_OUTER/INNER times what they multiply.
    """
    (k_h, t_h, l_h), (k_w, t_w, l_w) = (
        (
            cp.blur_params(n_in, n_out)[1],  # blur taps
            len(cp.resize_operator(n_in, n_out)[0]),  # our composite operator's taps
            float(np.abs(cp.cubic_weights(n_in, n_out)[1]).sum(axis=0).max()),
        )
        for n_in, n_out in zip(in_hw, out_hw)
    )
    blur = (3 * k_w + 4) + (3 * k_h + 4) + (2 * k_w + 4) + (2 * k_h + 4)  # torch's, then ours
    sums = 4 + 4 + (t_h + 1) + (t_w + 1)  # torch's bicubic passes; ours, with the composite weights
    cubic = 2 * (CUBIC_OUTER + CUBIC_INNER)  # per axis, in sum over an output's four taps
    return l_h * l_w * (blur + sums) * U + cubic * (l_h + l_w)


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
    assert np.abs(ours - ref).max() <= _resize_bound(shape, (224, 224))


@pytest.mark.parametrize("size", [(64, 96), (100, 30)])
def test_resize_other_targets_and_batch(size):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 300, 410)).astype(np.float32)
    ref = _resize_with_antialiasing(torch.from_numpy(x), size).numpy()
    ours = cp.resize_with_antialiasing(x, size)
    assert np.abs(ours - ref).max() <= _resize_bound((300, 410), size)


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
    # bit-identical where ATen's AVX2/AVX-512 kernels fuse the multiply-adds (ours emulates them); its
    # default kernel and other builds round them apart: within CUBIC_OUTER (the larger of the two
    # bounds; two weights add at the clamped border, one more rounding of a value <= 1)
    fused_kernel = np.array_equal(ours, ref)
    assert fused_kernel or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=CUBIC_OUTER + 2 * U)


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
    # the resize's bound, halved by (x + 1) / 2 and divided by std (>= 0.26); then the +1, - mean and
    # / std round once each side (<= 2U of values up to max|ref| each)
    std = min(FeatureExtractorConfig().image_std)
    bound = _resize_bound(shape, (224, 224)) / 2 / std + 3 * 2 * U * max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= bound


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
