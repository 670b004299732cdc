"""CLIP input from the original image: numpy port of the SVD pipeline's `_encode_image` preprocessing.

diffusers: pixels / 255 -> [-1, 1] -> `_resize_with_antialiasing` to 224 x 224 (kornia-style
Gaussian blur, then torch bicubic with align_corners=True) -> [0, 1] -> CLIP mean/std, all
float32. Per axis, blur then bicubic is one linear map with a narrow band (kernel size + 3
taps per output pixel), so the resize costs O(taps * output pixels) gathers, not a full-size blur.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from svd_trt.families.svd.config import FeatureExtractorConfig

F32 = np.float32
CUBIC_A = F32(-0.75)  # torch's bicubic convolution coefficient
# diffusers' pil_to_numpy then `* 2 - 1`, in float32, for each uint8 value (one gather per pixel)
_SIGNED = (np.arange(256, dtype=F32) / F32(255.0)) * F32(2.0) - F32(1.0)


def blur_params(in_size: int, out_size: int) -> tuple[float, int]:
    """sigma = max((in/out - 1) / 2, 0.001) (skimage's rule) and kernel size int(max(4 sigma, 3)) made odd."""
    sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
    size = int(max(2.0 * 2 * sigma, 3))
    return sigma, size + 1 - size % 2


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """exp(-x^2 / (2 sigma^2)) over x = -(size//2)..size//2, normalised to sum 1, float32 [size]."""
    x = np.arange(size, dtype=F32) - F32(size // 2)
    if size % 2 == 0:
        x = x + F32(0.5)
    s = F32(sigma)
    g = np.exp(-(x * x) / (F32(2) * (s * s)))
    return g / g.sum(dtype=F32)


def _conv1(x: np.ndarray) -> np.ndarray:
    """Keys' cubic for |x| <= 1: ((A + 2) x - (A + 3)) x^2 + 1, float32 as torch's cubic_convolution1."""
    return ((CUBIC_A + F32(2)) * x - (CUBIC_A + F32(3))) * x * x + F32(1)


def _fma(a: np.ndarray, b: np.ndarray, c: np.float32) -> np.ndarray:
    """a * b + c with one float32 rounding (float64 holds a float32 product exactly)."""
    return (a.astype(np.float64) * b + np.float64(c)).astype(F32)


def _conv2(x: np.ndarray) -> np.ndarray:
    """Keys' cubic for 1 <= |x| < 2: ((A x - 5A) x + 8A) x - 4A, float32 as torch's cubic_convolution2.

    torch's x86 CPU build contracts the first two multiply-adds into FMAs (measured: this
    matches its weights bit for bit; plain float32 is off by up to 7e-7 through cancellation).
    """
    a = CUBIC_A
    p = _fma(_fma(x, a, F32(-5) * a), x, F32(8) * a)
    return p * x - F32(4) * a


def cubic_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's bicubic (align_corners=True) source indices [4, out] (clamped at the border) and weights [4, out]."""
    scale = F32(in_size - 1) / F32(out_size - 1) if out_size > 1 else F32(0)
    real = scale * np.arange(out_size, dtype=F32)
    base = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    t = np.clip(real - base.astype(F32), F32(0), F32(1))
    weights = np.stack([_conv2(t + F32(1)), _conv1(t), _conv1(F32(1) - t), _conv2((F32(1) - t) + F32(1))])
    index = np.clip(base[None, :] + np.arange(-1, 3)[:, None], 0, in_size - 1)
    return index, weights


def resize_operator(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Blur then bicubic along one axis as one banded operator: source indices [T, out], weights [T, out].

    M = C @ B: B the reflect-padded Gaussian (kernel_size // 2 taps each side), C torch's bicubic;
    products and sums in float64 from the float32 factors torch uses, rounded once to float32.
    """
    sigma, size = blur_params(in_size, out_size)
    pad = size // 2
    if pad >= in_size:  # torch's reflect padding refuses this too
        raise ValueError(f"an image side of {in_size} pixels is too small to blur with {size} taps")
    cubic_index, cubic_w = cubic_weights(in_size, out_size)
    src = cubic_index[:, None, :] + np.arange(size)[None, :, None] - pad  # [4, size, out]
    src = np.abs(src)  # reflect: -k -> k, n-1+k -> n-1-k (no edge repeat)
    src = np.where(src >= in_size, 2 * (in_size - 1) - src, src)
    w = cubic_w[:, None, :].astype(np.float64) * gaussian_kernel(size, sigma)[None, :, None]
    dense = np.zeros((out_size, in_size))
    np.add.at(dense, (np.broadcast_to(np.arange(out_size), src.shape), src), w)
    nonzero = dense != 0
    lo = nonzero.argmax(axis=1)
    hi = in_size - 1 - nonzero[:, ::-1].argmax(axis=1)
    index = lo[None, :] + np.arange(int((hi - lo).max()) + 1)[:, None]
    weights = np.where(index < in_size, dense[np.arange(out_size), np.minimum(index, in_size - 1)], 0)
    return np.minimum(index, in_size - 1), weights.astype(F32)


def apply_operator(x: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """y[.., j, ..] = sum_t weights[t, j] * x[.., index[t, j], ..] along `axis`, float32."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = weights[0].reshape(shape) * x.take(index[0], axis=axis)
    for t in range(1, len(index)):
        out += weights[t].reshape(shape) * x.take(index[t], axis=axis)
    return out


def resize_with_antialiasing(
    x: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (-2, -1)
) -> np.ndarray:
    """diffusers' `_resize_with_antialiasing(x, size)` on float32 `x` whose H, W are `axes`.

    Separable, so the passes commute; height first (gathers whole rows, and the width pass
    then sees only size[0] rows), unlike torch's order: rounding differs by ~1 ulp.
    """
    x = np.asarray(x, dtype=F32)
    for axis, n in zip(axes, size):
        axis %= x.ndim
        x = apply_operator(x, *resize_operator(x.shape[axis], n), axis)
    return x


def clip_pixel_values(
    image: Image.Image | np.ndarray,
    cfg: FeatureExtractorConfig | None = None,
    image_size: int = 224,
) -> np.ndarray:
    """uint8 RGB image [H, W, 3] (or PIL) -> CLIP pixel_values float32 [1, 3, size, size]."""
    cfg = cfg or FeatureExtractorConfig()
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    x = _SIGNED[pixels]  # [H, W, 3]
    x = resize_with_antialiasing(x, (image_size, image_size), axes=(0, 1))
    x = (x + F32(1.0)) / F32(2.0)
    x = (x - np.asarray(cfg.image_mean, dtype=F32)) / np.asarray(cfg.image_std, dtype=F32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
