"""What one SVD generation asks for, declared once: diffusers' StableVideoDiffusionPipeline.__call__
arguments, defaults and checks.

`GenerationOptions` is read by the pipeline, by `svd-trt infer`, `svd-export check` and
`svd-export calibrate` (their click options are generated from these fields, svd_trt/cli.py)
and by the Triton request contract. `resolve` is the one validation every entry point runs
before any component does. `request_shape` is what memory admission (families/svd/memory.py)
needs of a resolved request. numpy-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from svd_trt.families.svd.config import SVDConfig
from svd_trt.families.svd.spec import DEFAULT_HEIGHT, DEFAULT_WIDTH, size_multiple
from svd_trt.options import PipelineError, check_common, flag
from svd_trt.options import option as _option
from svd_trt.spec import Span


@dataclass(frozen=True)
class GenerationOptions:
    """diffusers' StableVideoDiffusionPipeline.__call__ arguments and defaults; None = the model's."""

    num_frames: int | None = _option(None, "Frames to generate. [default: the model's]")
    height: int = _option(DEFAULT_HEIGHT, "Pixel height.")
    width: int = _option(DEFAULT_WIDTH, "Pixel width.")
    num_inference_steps: int = _option(25, "Denoising steps.")
    min_guidance_scale: float = _option(1.0, "Guidance on the first frame.")
    max_guidance_scale: float = _option(3.0, "Guidance on the last frame (CFG runs when > 1).")
    fps: int = _option(7, "Conditioning fps (the model sees fps - 1).")
    motion_bucket_id: int = _option(127, "Motion conditioning: higher moves more.")
    noise_aug_strength: float = _option(0.02, "Noise added to the conditioning image.")
    decode_chunk_size: int | None = _option(
        None, "Frames per VAE decode. [default: all frames, or the engines' largest chunk]"
    )
    seed: int | None = _option(None, "Seed of the image noise and the initial latents. [default: random]")


# Where `svd-export check` differs from a render: a fixed seed so reports are reproducible, and few
# steps so the fp32 torch run of --end-to-end stays affordable.
CHECK_DEFAULTS = {"seed": 0, "num_inference_steps": 3}

# fps is also the file's default frame rate: 0 or less cannot be written (and is no frame rate).
POSITIVE = ("num_frames", "height", "width", "num_inference_steps", "decode_chunk_size", "fps")
FLOATS = ("min_guidance_scale", "max_guidance_scale", "noise_aug_strength")
# The request sizes an engine directory records (TensorRT profiles are built from them).
LIMIT_NAMES = ("num_frames", "height", "width", "decode_chunk_size")


def do_cfg(max_guidance_scale: float) -> bool:
    """CFG runs iff max_guidance_scale > 1 (the pipeline's `guidance_scale > 1` with guidance_scale = max)."""
    return max_guidance_scale > 1


@dataclass(frozen=True)
class RequestShape:
    """The sizes a resolved request runs at: what memory admission needs of it."""

    batch: int  # the UNet's: 2 (unconditional + conditional) when CFG runs
    frames: int
    height: int
    width: int
    decode_chunk: int


def request_shape(opts: GenerationOptions) -> RequestShape:
    """The shape of a resolved request (num_frames and decode_chunk_size filled)."""
    batch = 2 if do_cfg(opts.max_guidance_scale) else 1
    return RequestShape(batch, opts.num_frames, opts.height, opts.width, opts.decode_chunk_size)


def resolve(
    opts: GenerationOptions, cfg: SVDConfig, limits: Mapping[str, Span] | None = None
) -> GenerationOptions:
    """Fill the model's defaults and refuse, in one line, anything the engines cannot run."""
    limits = limits or {}
    num_frames = opts.num_frames if opts.num_frames is not None else cfg.unet.num_frames
    chunk = opts.decode_chunk_size
    if chunk is None:
        served = limits.get("decode_chunk_size")
        chunk = num_frames if served is None or served.max is None else min(num_frames, served.max)
    opts = dataclasses.replace(opts, num_frames=num_frames, decode_chunk_size=chunk)
    check_common(opts, POSITIVE, FLOATS, size_multiple(cfg), limits)
    if opts.noise_aug_strength < 0:
        raise PipelineError(f"{flag('noise_aug_strength')} must be >= 0, got {opts.noise_aug_strength}")
    return opts
