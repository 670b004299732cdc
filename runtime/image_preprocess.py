"""Image files in, model inputs out: loading (diffusers' load_image), VAE-path preprocessing,
conditioning ids and frame postprocessing (diffusers' VideoProcessor in numpy)."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from svd_trt.errors import UserError

F32 = np.float32
log = logging.getLogger(__name__)

# Full scale of the modes Pillow gives images deeper than 8 bits: every 16-bit file it reads
# (PNG, TIFF, PGM grayscale) arrives as I;16* or I, with 0..65535. Float images (mode F: float
# TIFFs) carry no range of their own; they are read as [0, 1], the convention of float image
# data and of the pipeline's own float-array input (pipeline._as_pil).
_FULL_SCALE = {"I": 65535.0, "F": 1.0}


class ImageError(UserError, ValueError):
    """An image file that cannot be used: missing, unreadable, or past Pillow's pixel limit."""


def load_image(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, EXIF orientation applied (as diffusers.utils.load_image).

    `path` may be an open binary file (a served request's bytes); `name` then labels errors.
    8-bit modes (L, P, LA, RGBA, CMYK, ...) convert as diffusers does (Image.convert("RGB"):
    alpha dropped, not composited). Deeper images are scaled to 8 bits by their full scale
    (16-bit: / 257) where Image.convert would clip everything above 255 to white; 16-bit RGB(A)
    PNGs already arrive as 8-bit RGB(A) (Pillow keeps the high byte). Images above Pillow's
    PIL.Image.MAX_IMAGE_PIXELS are refused, in one line, before they are decoded.
    """
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that (and raises beyond):
            # the warning becomes the same refusal, and never reaches the terminal as text.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(_too_many_pixels(name, str(e))) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{name}: not a readable image ({_reason(e)})") from None
    return to_rgb8(image)


def _reason(e: Exception) -> str:
    """`Type: first line` of an exception, without the path the caller already names."""
    if isinstance(e, UnidentifiedImageError):  # its message only names the file (or a BytesIO repr)
        return type(e).__name__
    text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _too_many_pixels(path: str | Path, message: str) -> str:
    """One line with the pixel count (from Pillow's message) and the limit."""
    found = re.search(r"\((\d+) pixels\)", message)
    count = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    return (
        f"{path}: {count} is more than the {Image.MAX_IMAGE_PIXELS:,} this runtime decodes "
        "(PIL.Image.MAX_IMAGE_PIXELS, a decompression-bomb guard); downscale the image first"
    )


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; modes deeper than 8 bits are scaled by their full scale, not clipped."""
    kind = "I" if image.mode == "I" or image.mode.startswith("I;16") else image.mode
    if kind not in _FULL_SCALE:
        return image.convert("RGB")
    # float32 is exact enough: x / 257 is never within 1e-5 of a rounding tie for integer x.
    values = np.asarray(image, dtype=F32) * F32(255.0 / _FULL_SCALE[kind])
    np.nan_to_num(values, copy=False, nan=0.0)
    gray = np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


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


def postprocess(frames: np.ndarray) -> np.ndarray:
    """VAE output [..., 3, H, W] (about [-1, 1]) -> [..., H, W, 3] float32 in [0, 1]: clip(x * 0.5 + 0.5, 0, 1)."""
    # one copy into the output layout, then in place: the frames are the largest arrays of a run
    out = np.ascontiguousarray(np.moveaxis(frames, -3, -1), dtype=F32)
    np.multiply(out, F32(0.5), out=out)
    np.add(out, F32(0.5), out=out)
    return np.clip(out, F32(0), F32(1), out=out)
