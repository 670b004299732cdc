"""Request tensors in, a family's inputs and options out, result tensors back: the model's logic
without Triton.

Works on plain `name -> ndarray` dicts, so it is tested without a server. Every problem with a
request is a one-line UserError (the request's fault: 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svd_trt.errors import UserError
from svd_trt.runtime.inputs import load_inputs
from svd_trt.runtime.serving.contract import FRAMES, OUTPUT_FORMAT, OUTPUT_FORMATS, VIDEO, Contract
from svd_trt.runtime.video import to_uint8, write_mp4


class RequestError(UserError, ValueError):
    """A request the contract does not allow; the message is one line."""


@dataclass(frozen=True)
class GenerationRequest:
    inputs: dict[str, Any]  # the family's conditioning inputs: PIL images, texts
    options: Any  # the family's options dataclass, unresolved
    output_format: str | None = None


def parse_request(contract: Contract, tensors: Mapping[str, np.ndarray]) -> GenerationRequest:
    """The conditioning inputs (images opened, texts decoded), the options (absent scalars keep the
    family's defaults) and the output format."""
    raw = {}
    for spec in contract.conditioning:
        if spec.name in tensors:
            raw[spec.name] = _one(tensors, spec.name, bytes)
        elif not spec.optional:
            raise RequestError(f"{spec.name}: missing; send {spec.doc} as BYTES [1]")
    # Images are opened and checked here (runtime/inputs.py; bytes name the input in the message).
    inputs = load_inputs(contract.family, raw)
    options = {f.name: _one(tensors, f.name, f.python_type) for f in contract.options if f.name in tensors}
    fmt = None
    if OUTPUT_FORMAT.name in tensors:
        fmt = _one(tensors, OUTPUT_FORMAT.name, bytes).decode("utf-8", "replace").strip().lower()
        if fmt not in OUTPUT_FORMATS:
            raise RequestError(f"output_format must be one of: {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
    return GenerationRequest(inputs, contract.family.options(**options), fmt)


def _one(tensors: Mapping[str, np.ndarray], name: str, kind: type):
    """The single value of a [1] tensor as `kind` (bytes, int, float, ...)."""
    arr = np.asarray(tensors[name])
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


def result_tensors(frames: np.ndarray, output_format: str | None, fps: float) -> dict[str, np.ndarray]:
    """`frames` uint8 [F, H, W, 3] and, for output_format 'mp4', `video` BYTES [1] playing at `fps`
    (the family's output frame rate, as `svd-trt infer` writes it)."""
    pixels = to_uint8(frames)
    if pixels.size == 0:  # Triton's Python backend crashes on zero-size outputs
        raise RequestError(f"the generation produced no frames (shape {list(pixels.shape)})")
    out = {FRAMES.name: pixels}
    if output_format == "mp4":
        out[VIDEO.name] = np.array([mp4_bytes(pixels, fps)], dtype=object)
    return out


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Frames as an H.264 mp4 file's bytes, written by runtime/video.py's writer."""
    with tempfile.TemporaryDirectory(prefix="svd-trt-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        write_mp4(frames, path, fps)
        return path.read_bytes()


def progress_tensors(step: int, total: int) -> dict[str, np.ndarray]:
    """One progress response of the stream model: `step` of `total` denoising steps done."""
    return {"step": np.array([step], dtype=np.int32), "total": np.array([total], dtype=np.int32)}
