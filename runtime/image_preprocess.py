"""VAE-path image preprocessing, conditioning ids and frame postprocessing (diffusers' VideoProcessor in numpy)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

F32 = np.float32


def load_image(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied (as diffusers.utils.load_image).

    `path` may be an open binary file (a served request's bytes); `name` then labels errors.
    """
    name = name or str(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name}: not a readable image ({type(e).__name__})") from None
    return image.convert("RGB")


def vae_pixel_values(image: Image.Image, height: int, width: int, vae_scale_factor: int = 8) -> np.ndarray:
    """PIL image -> float32 [1, 3, H, W] in [-1, 1]: VideoProcessor.preprocess(image, height, width).

    LANCZOS resize to (H, W) rounded down to multiples of vae_scale_factor, then 2 * pixels / 255 - 1.
    The image is converted to RGB first (diffusers assumes it already is, as load_image makes it).
    """
    height, width = height - height % vae_scale_factor, width - width % vae_scale_factor
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be at least {vae_scale_factor}, got {height}x{width}")
    image = image.convert("RGB").resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = np.asarray(image).astype(F32) / F32(255.0)  # pil_to_numpy
    return np.ascontiguousarray((F32(2.0) * pixels - F32(1.0)).transpose(2, 0, 1)[None])


def added_time_ids(
    fps: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch: int = 1,
    dtype: np.dtype = np.float32,
) -> np.ndarray:
    """[fps - 1, motion_bucket_id, noise_aug_strength] per row, [B, 3]; SVD was conditioned on fps - 1.

    For CFG pass batch = 2 * B: diffusers concatenates two identical copies.
    """
    row = np.array([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype)
    return np.repeat(row, batch, axis=0)


def postprocess(frames: np.ndarray) -> np.ndarray:
    """VAE output [F, 3, H, W] (about [-1, 1]) -> [F, H, W, 3] float32 in [0, 1]: clip(x * 0.5 + 0.5, 0, 1)."""
    # one copy into the output layout, then in place: the frames are the largest arrays of a run
    out = np.ascontiguousarray(frames.transpose(0, 2, 3, 1), dtype=F32)
    np.multiply(out, F32(0.5), out=out)
    np.add(out, F32(0.5), out=out)
    return np.clip(out, F32(0), F32(1), out=out)
