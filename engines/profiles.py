"""The request sizes an engine directory serves, and the TensorRT optimization profiles built from them.

The user gives frames, height and width as `N` or `MIN:MAX`, and the largest decode chunk.
`served_limits` turns that into one Span per GenerationOptions size field (recorded in the
manifest; the runtime refuses anything outside before running a component). Each component's
per-input (min, opt, max) shapes are `ComponentSpec.input_shapes` at three size dicts, its
batch and frame axis as its spec says, so no shape is spelled here. numpy only: no TensorRT
needed to compute or test a profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from svd_trt.errors import UserError
from svd_trt.families.svd.config import SVDConfig
from svd_trt.spec import DEFAULT_HEIGHT, DEFAULT_WIDTH, Span, component_specs, size_multiple, sizes_for

Shape = tuple[int, ...]
# input name -> {"min": shape, "opt": shape, "max": shape}; JSON-friendly, recorded in the manifest.
Profile = dict[str, dict[str, Shape]]
Range = tuple[int, int | None]  # (min, max); max None = unbounded

LEVELS = ("min", "opt", "max")


class RangeError(UserError, ValueError):
    """A bad size range; the message is one line naming the option."""


@dataclass(frozen=True)
class ProfileRequest:
    """What the user asked for, as (min, max) pairs; None = the default for the backend."""

    num_frames: Range | None = None
    height: Range | None = None
    width: Range | None = None
    decode_chunk_size: int | None = None


def parse_range(text: str, option: str) -> tuple[int, int]:
    """`14` -> (14, 14), `8:25` -> (8, 25); RangeError names `option`."""
    lo, sep, hi = text.strip().partition(":")
    try:
        pair = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        raise RangeError(f"{option} {text!r}: expected N or MIN:MAX, e.g. 14 or 8:25") from None
    _check_pair(pair, option)
    return pair


def _check_pair(pair: Range, option: str) -> None:
    lo, hi = pair
    if lo <= 0 or (hi is not None and hi <= 0):
        raise RangeError(f"{option} {lo}:{hi}: values must be positive")
    if hi is not None and lo > hi:
        raise RangeError(f"{option} {lo}:{hi}: min {lo} is larger than max {hi}")


def _span(pair: Range, default: int, unit: int = 1) -> Span:
    """opt = the default (rounded down to `unit`) clamped into the range."""
    lo, hi = pair
    opt = max(default // unit * unit, lo)
    return Span(lo, opt if hi is None else min(opt, hi), hi)


def served_limits(cfg: SVDConfig, request: ProfileRequest, bounded: bool) -> dict[str, Span]:
    """Validated spans of the request sizes (GenerationOptions names).

    `bounded` (TensorRT: every engine needs a max): an unset range is the model's frame count
    and the default size. Unbounded (ONNX Runtime): an unset range accepts any size >= 1.
    """
    unit = size_multiple(cfg)
    default_frames = (cfg.unet.num_frames, cfg.unet.num_frames) if bounded else (1, None)
    frames = request.num_frames or default_frames
    height = request.height or ((DEFAULT_HEIGHT, DEFAULT_HEIGHT) if bounded else (unit, None))
    width = request.width or ((DEFAULT_WIDTH, DEFAULT_WIDTH) if bounded else (unit, None))
    for option, pair in (("--num-frames", frames), ("--height", height), ("--width", width)):
        _check_pair(pair, option)
    for option, (lo, hi) in (("--height", height), ("--width", width)):
        if lo % unit or (hi is not None and hi % unit):
            raise RangeError(f"{option} {lo}:{hi}: this model needs multiples of {unit} pixels")
    chunk = request.decode_chunk_size if request.decode_chunk_size is not None else frames[1]
    if chunk is not None and chunk <= 0:
        raise RangeError(f"--decode-chunk-size {chunk}: must be positive")
    if chunk is not None and frames[1] is not None:
        chunk = min(chunk, frames[1])  # a chunk longer than the video decodes as one chunk
    return {
        "num_frames": _span(frames, cfg.unet.num_frames),
        "height": _span(height, DEFAULT_HEIGHT, unit),
        "width": _span(width, DEFAULT_WIDTH, unit),
        # every tail chunk, 1..chunk frames, must run
        "decode_chunk_size": Span(1, chunk or cfg.unet.num_frames, chunk),
    }


def component_sizes(cfg: SVDConfig, limits: dict[str, Span]) -> dict[str, dict[str, dict[str, int]]]:
    """Per component, the symbolic sizes (B, F, H, W, h, w) at min, opt and max."""
    out = {}
    for name, spec in component_specs(cfg).items():
        dims = (spec.batch, limits[spec.frames], limits["height"], limits["width"])
        out[name] = {level: sizes_for(cfg, *(d.at(level) for d in dims)) for level in LEVELS}
    return out


def component_profiles(cfg: SVDConfig, limits: dict[str, Span]) -> dict[str, Profile]:
    """Per component and input, the (min, opt, max) shapes; all through spec.input_shapes."""
    sizes = component_sizes(cfg, limits)
    profiles = {}
    for name, spec in component_specs(cfg).items():
        shapes = {level: spec.input_shapes(sizes[name][level]) for level in LEVELS}
        profiles[name] = {inp: {level: shapes[level][inp] for level in LEVELS} for inp in spec.input_names}
    return profiles
