"""TensorRT optimization profiles from user ranges, derived through the component specs.

The user gives frames, height and width as `N` or `MIN:MAX`, and the largest decode
chunk. Each component's per-input (min, opt, max) shapes are `ComponentSpec.input_shapes`
at three size dicts, so no shape is spelled here. Batch follows how the pipeline calls
each component: the UNet at 2 (cond + uncond, CFG) or 1, the encoders once per video.
numpy only: no TensorRT needed to compute or test a profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from svd_trt.config import SVDConfig
from svd_trt.spec import component_specs, sizes_for

Shape = tuple[int, ...]
# input name -> {"min": shape, "opt": shape, "max": shape}; JSON-friendly, recorded in the manifest.
Profile = dict[str, dict[str, Shape]]

DEFAULT_HEIGHT = 576
DEFAULT_WIDTH = 1024
LEVELS = ("min", "opt", "max")


class RangeError(ValueError):
    """A bad profile range; the message is one line naming the option."""


@dataclass(frozen=True)
class Span:
    """One symbolic dim's range."""

    min: int
    opt: int
    max: int

    def at(self, level: str) -> int:
        return getattr(self, level)


# The UNet is optimised for batch 2 (CFG on); batch 1 still runs when guidance is off.
BATCH = {
    "image_encoder": Span(1, 1, 2),
    "vae_encoder": Span(1, 1, 2),
    "unet": Span(1, 2, 2),
    "vae_decoder": Span(1, 1, 1),  # no batch axis: frames are its leading dim
}


@dataclass(frozen=True)
class ProfileRequest:
    """What the user asked for, as (min, max) pairs; None = the model's own value."""

    num_frames: tuple[int, int] | None = None
    height: tuple[int, int] = (DEFAULT_HEIGHT, DEFAULT_HEIGHT)
    width: tuple[int, int] = (DEFAULT_WIDTH, DEFAULT_WIDTH)
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


def _check_pair(pair: tuple[int, int], option: str) -> None:
    lo, hi = pair
    if lo <= 0 or hi <= 0:
        raise RangeError(f"{option} {lo}:{hi}: values must be positive")
    if lo > hi:
        raise RangeError(f"{option} {lo}:{hi}: min {lo} is larger than max {hi}")


def size_unit(cfg: SVDConfig) -> int:
    """Pixels per size step the UNet accepts (as SVDPipeline.size_unit): each down block halves."""
    return cfg.vae.scale_factor * 2 ** (len(cfg.unet.block_out_channels) - 1)


def _span(pair: tuple[int, int], default: int, unit: int = 1) -> Span:
    """opt = the default (rounded down to `unit`) clamped into the range."""
    lo, hi = pair
    return Span(lo, min(max(default // unit * unit, lo), hi), hi)


def dim_spans(cfg: SVDConfig, request: ProfileRequest) -> dict[str, Span]:
    """Validated spans of F (frames), H, W and the decoder's chunk length."""
    unit = size_unit(cfg)
    frames = request.num_frames or (cfg.unet.num_frames, cfg.unet.num_frames)
    for option, pair in (("--num-frames", frames), ("--height", request.height), ("--width", request.width)):
        _check_pair(pair, option)
    for option, (lo, hi) in (("--height", request.height), ("--width", request.width)):
        if lo % unit or hi % unit:
            raise RangeError(f"{option} {lo}:{hi}: this model needs multiples of {unit} pixels")
    chunk = request.decode_chunk_size if request.decode_chunk_size is not None else frames[1]
    if chunk <= 0:
        raise RangeError(f"--decode-chunk-size {chunk}: must be positive")
    chunk = min(chunk, frames[1])  # a chunk longer than the video decodes as one chunk
    return {
        "F": _span(frames, cfg.unet.num_frames),
        "H": _span(request.height, DEFAULT_HEIGHT, unit),
        "W": _span(request.width, DEFAULT_WIDTH, unit),
        "chunk": Span(1, chunk, chunk),  # every tail chunk, 1..chunk frames, must run
    }


def component_sizes(cfg: SVDConfig, spans: dict[str, Span]) -> dict[str, dict[str, dict[str, int]]]:
    """Per component, the symbolic sizes (B, F, H, W, h, w) at min, opt and max."""
    out = {}
    for name in component_specs(cfg):
        frames = spans["chunk"] if name == "vae_decoder" else spans["F"]
        dims = (BATCH[name], frames, spans["H"], spans["W"])
        out[name] = {level: sizes_for(cfg, *(d.at(level) for d in dims)) for level in LEVELS}
    return out


def component_profiles(cfg: SVDConfig, request: ProfileRequest) -> dict[str, Profile]:
    """Per component and input, the (min, opt, max) shapes; all through spec.input_shapes."""
    sizes = component_sizes(cfg, dim_spans(cfg, request))
    profiles = {}
    for name, spec in component_specs(cfg).items():
        shapes = {level: spec.input_shapes(sizes[name][level]) for level in LEVELS}
        profiles[name] = {inp: {level: shapes[level][inp] for level in LEVELS} for inp in spec.input_names}
    return profiles
