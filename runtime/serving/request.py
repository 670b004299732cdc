"""Request tensors in, GenerationOptions and result tensors out: the model's logic without Triton.

Works on plain `name -> ndarray` dicts, so it is tested without a server. Every problem
with a request is a RequestError (a ValueError, as the CLI's input errors are) with one line.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from svd_trt.errors import UserError
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.contract import GenerationOptions
from svd_trt.runtime.video import to_uint8, write_mp4


class RequestError(UserError, ValueError):
    """A request the contract does not allow; the message is one line."""


@dataclass(frozen=True)
class GenerationRequest:
    image: Image.Image
    options: GenerationOptions
    output_format: str | None = None


def parse_request(inputs: Mapping[str, np.ndarray]) -> GenerationRequest:
    """The image, the options (absent scalars keep GenerationOptions' defaults) and the output format."""
    if contract.IMAGE.name not in inputs:
        raise RequestError("image: missing; send an encoded PNG, JPEG or WebP file as BYTES [1]")
    image = load_image(io.BytesIO(_one(inputs, contract.IMAGE.name, bytes)), name=contract.IMAGE.name)
    options = {
        f.name: _one(inputs, f.name, f.python_type) for f in contract.option_fields() if f.name in inputs
    }
    fmt = None
    if contract.OUTPUT_FORMAT.name in inputs:
        fmt = _one(inputs, contract.OUTPUT_FORMAT.name, bytes).decode("utf-8", "replace").strip().lower()
        if fmt not in contract.OUTPUT_FORMATS:
            allowed = ", ".join(contract.OUTPUT_FORMATS)
            raise RequestError(f"output_format must be one of: {allowed}; got {fmt!r}")
    return GenerationRequest(image, GenerationOptions(**options), fmt)


def _one(inputs: Mapping[str, np.ndarray], name: str, kind: type):
    """The single value of a [1] tensor as `kind` (bytes, int, float, ...)."""
    arr = np.asarray(inputs[name])
    if arr.size != 1:
        raise RequestError(f"{name} must hold one value, got shape {list(arr.shape)}")
    value = arr.reshape(-1)[0]
    if kind is bytes:
        if not isinstance(value, bytes | str):
            raise RequestError(f"{name} must be BYTES, got {arr.dtype}")
        return value.encode() if isinstance(value, str) else value
    if kind is str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return kind(value.item() if isinstance(value, np.generic) else value)


def result_tensors(
    frames: np.ndarray, request: GenerationRequest, fps: float | None = None
) -> dict[str, np.ndarray]:
    """`frames` uint8 [F, H, W, 3] and, for output_format 'mp4', `video` BYTES [1].

    `fps` is the file's frame rate; default the conditioning fps, as `svd-trt infer`.
    """
    pixels = to_uint8(frames)
    if pixels.size == 0:  # Triton's Python backend crashes on zero-size outputs
        raise RequestError(f"the generation produced no frames (shape {list(pixels.shape)})")
    out = {contract.FRAMES.name: pixels}
    if request.output_format == "mp4":
        rate = fps if fps is not None else request.options.fps
        out[contract.VIDEO.name] = np.array([mp4_bytes(pixels, rate)], dtype=object)
    return out


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Frames as an H.264 mp4 file's bytes, written by runtime/video.py's writer."""
    with tempfile.TemporaryDirectory(prefix="svd-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        write_mp4(frames, path, fps)
        return path.read_bytes()


def progress_tensors(step: int, total: int) -> dict[str, np.ndarray]:
    """One progress response of svd_stream: `step` of `total` denoising steps done."""
    return {"step": np.array([step], dtype=np.int32), "total": np.array([total], dtype=np.int32)}
