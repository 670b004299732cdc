"""What one LTX-Video generation asks for, declared once: diffusers' LTXPipeline.__call__ arguments,
defaults and checks (LTXImageToVideoPipeline takes the same and an image).

Read by the pipeline, `svd-trt infer` and `svd-export check` (their click options are generated from
these fields) and by the Triton request contract. numpy-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from svd_trt.families.ltx.config import LTXConfig
from svd_trt.options import PipelineError, check_common, option
from svd_trt.spec import Span


@dataclass(frozen=True)
class LTXOptions:
    """diffusers' LTXPipeline.__call__ arguments and defaults (None = derived, as there)."""

    num_frames: int = option(161, "Frames to generate: 1 + a multiple of the VAE's temporal ratio (8).")
    height: int = option(512, "Pixel height, a multiple of the VAE's spatial ratio (32).")
    width: int = option(704, "Pixel width, a multiple of the VAE's spatial ratio (32).")
    frame_rate: int = option(25, "Frame rate the model is conditioned on (RoPE's time scale), and the file's.")
    num_inference_steps: int = option(50, "Denoising steps.")
    guidance_scale: float = option(3.0, "Classifier-free guidance scale (CFG runs when > 1).")
    guidance_rescale: float = option(0.0, "Rescale the guided prediction toward the positive one's std (0: off).")
    decode_timestep: float = option(0.0, "Timestep of a timestep-conditioned VAE decoder.")
    decode_noise_scale: float | None = option(
        None, "Noise mixed into the latents before decoding. [default: --decode-timestep]"
    )
    max_sequence_length: int = option(128, "Text tokens (prompts are padded or cut to this).")
    decode_tiling: bool = option(
        False,
        "Decode in overlapping spatial / temporal tiles (diffusers' vae.enable_tiling() with "
        "use_framewise_decoding, default tile sizes): bounded memory, not exact.",
    )
    seed: int | None = option(None, "Seed of every random draw. [default: random]")


# Where `svd-export check` differs from a render: a fixed seed, few steps and a small video so the
# fp32 torch run of --end-to-end stays affordable (9 frames of 64x96: valid for the 32x / 8x VAE and
# the tests' 4x / 4x one; at diffusers' 161 x 512 x 704 a 4x VAE's dynamic shift overflows). check
# moves each size into the range a directory serves (engines/accuracy.py: check_defaults).
CHECK_DEFAULTS = {"seed": 0, "num_inference_steps": 3, "num_frames": 9, "height": 64, "width": 96}
POSITIVE = ("num_frames", "height", "width", "frame_rate", "num_inference_steps", "max_sequence_length")
FLOATS = ("guidance_scale", "guidance_rescale", "decode_timestep", "decode_noise_scale")
# The request sizes an engine directory records (TensorRT profiles are built from them).
LIMIT_NAMES = ("num_frames", "height", "width", "max_sequence_length")


def cfg_on(guidance_scale: float) -> bool:
    """diffusers' do_classifier_free_guidance: guidance_scale > 1."""
    return guidance_scale > 1.0


def resolve(opts: LTXOptions, cfg: LTXConfig, limits: Mapping[str, Span] | None = None) -> LTXOptions:
    """Refuse, in one line, anything the engines cannot run (before any component runs)."""
    check_common(opts, POSITIVE, FLOATS, cfg.spatial_ratio, limits)
    r = cfg.temporal_ratio
    if (opts.num_frames - 1) % r:
        # diffusers would silently return (F' - 1) * r + 1 frames instead
        lower = (opts.num_frames - 1) // r * r + 1
        raise PipelineError(
            f"--num-frames must be 1 + a multiple of {r} (the VAE's temporal ratio), got {opts.num_frames}; "
            f"try {lower} or {lower + r}"
        )
    for name in ("guidance_rescale", "decode_timestep", "decode_noise_scale"):
        value = getattr(opts, name)
        if value is not None and value < 0:
            raise PipelineError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    return dataclasses.replace(opts)
