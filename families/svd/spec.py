"""SVD's four components as ComponentSpecs (svd_trt/spec.py), its size rule and its default size.

Symbolic dims: B batch, F frames, H/W pixels, h/w latents (h = H / vae scale factor). numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from svd_trt.families.svd.config import SVDConfig
from svd_trt.limits import RangeError, Request, check_pair, check_pixel_ranges, requested, span
from svd_trt.spec import ComponentSpec, Span, TensorSpec, Tolerance, draw_from

# diffusers' StableVideoDiffusionPipeline.__call__ defaults (SVD's training resolution).
DEFAULT_HEIGHT = 576
DEFAULT_WIDTH = 1024
# diffusers' check_inputs: "`height` and `width` have to be divisible by 8".
DIFFUSERS_SIZE_MULTIPLE = 8




def sigma_timesteps(shape: tuple[int, ...], rng: np.random.Generator, timesteps: np.ndarray | None) -> np.ndarray:
    """The UNet's timesteps: the schedule's where given, else 0.25 * ln(sigma) over SVD's sigma range."""
    drawn = draw_from(timesteps, rng, shape)
    return drawn if drawn is not None else 0.25 * np.log(rng.uniform(0.002, 700.0, shape))


def time_ids(shape: tuple[int, ...], rng: np.random.Generator, timesteps: np.ndarray | None = None) -> np.ndarray:
    """added_time_ids as used: fps - 1, motion bucket, noise-augmentation strength."""
    fps_id = rng.integers(3, 30, shape[:-1] + (1,))
    motion = rng.integers(1, 255, shape[:-1] + (1,))
    aug = rng.uniform(0.0, 0.1, shape[:-1] + (1,))
    return np.concatenate([fps_id, motion, aug], axis=-1)


# Precision per target. fp16 where the GPU has it safe; the VAE encoder stays fp32 everywhere
# (diffusers' force_upcast: its fp16 latents overflow with trained weights). The VAE decoder is
# fp32 in TensorRT (Stability's TensorRT model card) but fp16 in the torch CUDA backend, because
# that backend is the like-for-like contender of diffusers' fp16 pipeline, which decodes in fp16.
# The CPU targets run fp32: ONNX Runtime's CPU kernels are fp32, fp16 there only adds casts.
def _precision(gpu: str, torch_cuda: str | None = None) -> dict[str, str]:
    return {"onnxruntime": "fp32", "tensorrt": gpu, "torch-cuda": torch_cuda or gpu, "torch-cpu": "fp32"}


# Tolerance rows, engine vs the fp32 port; atol in the output's own units. Scales of the real
# model's outputs: image_embeds ~O(1), latent (unscaled) std ~5.5 = 1 / 0.18215, noise_pred ~unit
# std, frames in about [-1, 1] (1e-3 there is 1/8 of an 8-bit level after postprocessing).
# - fp32 (ONNX Runtime, TensorRT strict fp32 without TF32): only op order, fusions and conv
#   algorithms differ, ~1e-6 of the output scale on the small model (measured: <= 5e-6 absolute
#   on O(1) outputs), ~1e-5..1e-4 expected through the real model's depth. 1e-3 of the scale
#   leaves that margin and still catches a wrong weight or a wrong norm epsilon (~1e-2).
# - fp16: unit roundoff 2^-11 = 4.9e-4 per rounding, the inputs alone already rounded; through
#   32 CLIP layers or the UNet's ~40 resblocks/attentions the worst element of millions lands
#   at ~1e-2 of the scale. Polygraphy's default 1e-5 would fail every fp16 engine; 2e-2..3e-2
#   (x5.5 for the unscaled latent) pass rounding noise. The price: a subtle corruption below
#   ~3e-2 passes an fp16 check; check an fp32 build for that.
# Quantized UNets (int8/fp8) have no row: they are scored against the float UNet kept beside
# them, end to end (QUANT_MIN_PSNR).
def _tolerance(fp32: Tolerance, fp16: Tolerance) -> dict[str, Tolerance]:
    return {"fp32": fp32, "fp16": fp16}


def component_specs(cfg: SVDConfig) -> dict[str, ComponentSpec]:
    """The four components' specs for one model config, in the order the pipeline runs them."""
    lat = cfg.vae.latent_channels
    clip = cfg.clip
    return {
        "image_encoder": ComponentSpec(
            "image_encoder",
            source="image_encoder",
            method=None,
            inputs=(TensorSpec("pixel_values", ("B", 3, clip.image_size, clip.image_size)),),
            outputs=(TensorSpec("image_embeds", ("B", clip.projection_dim)),),
            batch=Span(1, 1, 2),
            frames="num_frames",
            precision=_precision("fp16"),
            tolerance=_tolerance(Tolerance(1e-3, 1e-3), Tolerance(2e-2, 2e-2)),
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder",
            source="vae",
            method="encode",
            inputs=(TensorSpec("image", ("B", 3, "H", "W"), dist="signed_unit"),),
            outputs=(TensorSpec("latent", ("B", lat, "h", "w")),),
            batch=Span(1, 1, 2),
            frames="num_frames",
            precision=_precision("fp32"),
            # the unscaled latent is ~5.5x the others' scale: atol scales with it
            tolerance=_tolerance(Tolerance(5e-3, 1e-3), Tolerance(1e-1, 2e-2)),
        ),
        "unet": ComponentSpec(
            "unet",
            source="unet",
            method=None,
            inputs=(
                TensorSpec("sample", ("B", "F", cfg.unet.in_channels, "h", "w")),
                TensorSpec("timestep", ("B",), dist=sigma_timesteps, fixed_dtype="float32"),
                TensorSpec("encoder_hidden_states", ("B", 1, clip.projection_dim)),
                # fp32 in every precision: it feeds fp32 sinusoids (noise-aug strength 0.02 is not an fp16 value)
                TensorSpec("added_time_ids", ("B", cfg.unet.num_time_ids), dist=time_ids, fixed_dtype="float32"),
            ),
            outputs=(TensorSpec("noise_pred", ("B", "F", cfg.unet.out_channels, "h", "w")),),
            # batch 2 = cond + uncond (CFG on), the common case; 1 still runs when guidance is off
            batch=Span(1, 2, 2),
            frames="num_frames",
            precision=_precision("fp16"),
            tolerance=_tolerance(Tolerance(1e-3, 1e-3), Tolerance(3e-2, 3e-2)),
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            source="vae",
            method="decode",
            inputs=(TensorSpec("latents", ("F", lat, "h", "w")),),
            outputs=(TensorSpec("frames", ("F", 3, "H", "W")),),
            batch=Span(1, 1, 1),  # no batch axis: frames are its leading dim
            frames="decode_chunk_size",
            precision=_precision("fp32", torch_cuda="fp16"),
            tolerance=_tolerance(Tolerance(1e-3, 1e-3), Tolerance(2e-2, 2e-2)),
        ),
    }


def size_multiple(cfg: SVDConfig) -> int:
    """Height and width must be multiples of this: diffusers' 8, and whole latents."""
    return math.lcm(DIFFUSERS_SIZE_MULTIPLE, cfg.vae.scale_factor)


def sizes_for(cfg: SVDConfig, batch: int, frames: int, height: int, width: int) -> dict[str, int]:
    """Concrete values of the symbolic dims for a pixel size."""
    s = cfg.vae.scale_factor
    return {"B": batch, "F": frames, "H": height, "W": width, "h": height // s, "w": width // s}


def served_limits(cfg: SVDConfig, request: Request, bounded: bool) -> dict[str, Span]:
    """Validated spans of the request sizes (GenerationOptions names).

    `bounded` (TensorRT: every engine needs a max): an unset range is the model's frame count
    and the default size. Unbounded (ONNX Runtime): an unset range accepts any size >= 1.
    """
    unit = size_multiple(cfg)
    default_frames = (cfg.unet.num_frames, cfg.unet.num_frames) if bounded else (1, None)
    frames = requested(request, "num_frames", default_frames)
    height = requested(request, "height", (DEFAULT_HEIGHT, DEFAULT_HEIGHT) if bounded else (unit, None))
    width = requested(request, "width", (DEFAULT_WIDTH, DEFAULT_WIDTH) if bounded else (unit, None))
    for option, pair in (("--num-frames", frames), ("--height", height), ("--width", width)):
        check_pair(pair, option)
    check_pixel_ranges(height, width, unit)
    asked = request.get("decode_chunk_size")
    asked = asked[1] if isinstance(asked, tuple) else asked  # N or MIN:MAX: the largest chunk matters
    chunk = asked if asked is not None else frames[1]
    if chunk is not None and chunk <= 0:
        raise RangeError(f"--decode-chunk-size {chunk}: must be positive")
    if chunk is not None and frames[1] is not None:
        chunk = min(chunk, frames[1])  # a chunk longer than the video decodes as one chunk
    return {
        "num_frames": span(frames, cfg.unet.num_frames),
        "height": span(height, DEFAULT_HEIGHT, unit),
        "width": span(width, DEFAULT_WIDTH, unit),
        # every tail chunk, 1..chunk frames, must run
        "decode_chunk_size": Span(1, chunk or cfg.unet.num_frames, chunk),
    }
