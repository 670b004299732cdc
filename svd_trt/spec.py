"""One description per component, read by export, engine builds, the torch backend, the accuracy
check, the runtime and the benchmarks; no other module spells these facts.

A `ComponentSpec` says where a component comes from (snapshot folder, port method), its I/O
(names, symbolic dims, dtypes, how sample inputs are drawn), how the pipeline calls it (batch
range, which request size is its frame axis), its precision on every target and the tolerance
its engines are held to against the fp32 port. The size rule and the default size live here
too. Symbolic dims: B batch, F frames, H/W pixels, h/w latents (h = H / vae scale factor).
numpy only: the runtime imports this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from svd_trt.errors import UserError
from svd_trt.families.svd.config import SVDConfig

Dim = str | int

# What build-engines builds and export-onnx exports for: an engine directory's backend / target.
ENGINE_BACKENDS = ("onnxruntime", "tensorrt")
# What runs an engine directory: its engines, or the torch port itself (export/torch_backend.py).
RUN_BACKENDS = (*ENGINE_BACKENDS, "torch")
# Who runs a component: ONNX Runtime (CPU or CUDA), TensorRT, and the torch backend on a CUDA
# GPU or on the CPU. Each spec gives its precision on every one of them.
TARGETS = (*ENGINE_BACKENDS, "torch-cuda", "torch-cpu")
FLOAT_PRECISIONS = ("fp32", "fp16")
QUANTIZED_PRECISIONS = ("int8", "fp8")  # the UNet only: Q/DQ graphs from calibration/
# FP8 tensor cores: Ada (compute capability 8.9), Hopper (9.0) and newer; TensorRT only (ONNX
# Runtime has no FP8 kernels on the CPU).
FP8_MIN_CAPABILITY = (8, 9)
FP8_NEEDS = f"TensorRT on a GPU of compute capability >= {'.'.join(map(str, FP8_MIN_CAPABILITY))} (Ada, Hopper)"

# diffusers' StableVideoDiffusionPipeline.__call__ defaults (SVD's training resolution).
DEFAULT_HEIGHT = 576
DEFAULT_WIDTH = 1024
# diffusers' check_inputs: "`height` and `width` have to be divisible by 8".
DIFFUSERS_SIZE_MULTIPLE = 8


class SpecError(UserError, ValueError):
    """A request the specs do not cover (unknown component, precision or target): one line."""


@dataclass(frozen=True)
class Span:
    """One dim's range: min, the size engines are tuned for (opt), max; None = unbounded."""

    min: int
    opt: int
    max: int | None

    def at(self, level: str) -> int:
        value = getattr(self, level)
        if value is None:
            raise SpecError(f"no {level} for an unbounded range")
        return value

    def contains(self, value: int) -> bool:
        return self.min <= value and (self.max is None or value <= self.max)

    def text(self) -> str:
        return f"{self.min}..{'any' if self.max is None else self.max}"


@dataclass(frozen=True)
class Tolerance:
    """Polygraphy's elementwise check: an element fails only if it exceeds both."""

    atol: float
    rtol: float


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `fixed_dtype` pins a tensor to a dtype in every precision."""

    name: str
    dims: tuple[Dim, ...]
    # how sample inputs are drawn: normal, signed_unit, timestep, time_ids, token_ids (below `high`),
    # text_mask (1s then 0s per row), flow_timestep (0..1000), decode_timestep (0..0.1)
    dist: str = "normal"
    fixed_dtype: str | None = None
    high: int | None = None  # token_ids: the vocabulary size

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.dims)

    def dtype(self, precision: str) -> np.dtype:
        if self.fixed_dtype:
            return np.dtype(self.fixed_dtype)
        return np.dtype(np.float16 if precision == "fp16" else np.float32)


@dataclass(frozen=True)
class ComponentSpec:
    """A component as every layer sees it."""

    name: str
    source: str  # the snapshot folder holding its weights (and the port module built from it)
    method: str | None  # the port module's method exported as this component; None = forward
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: Span  # how the pipeline calls it
    frames: str  # the request size that is its F axis: num_frames, or decode_chunk_size for the decoder
    precision: Mapping[str, str]  # target -> precision
    tolerance: Mapping[str, Tolerance]  # engine precision -> tolerance against the fp32 port

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def precision_on(self, target: str) -> str:
        if target not in self.precision:
            raise SpecError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
        return self.precision[target]

    def tolerance_at(self, precision: str) -> Tolerance:
        if precision not in self.tolerance:
            raise SpecError(f"no accuracy tolerance for {self.name} at {precision} (svd_trt/spec.py)")
        return self.tolerance[precision]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes: every symbolic dim of every tensor."""
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
            for t in self.inputs + self.outputs
        }

    def input_shapes(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape(sizes) for t in self.inputs}

    def sample_inputs(
        self,
        sizes: Mapping[str, int],
        rng: np.random.Generator,
        precision: str = "fp32",
        timesteps: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Inputs in the ranges the pipeline feeds (see `draw`); `timesteps`: the schedule's to draw from."""
        return {
            t.name: draw(t, t.shape(sizes), rng, timesteps).astype(t.dtype(precision)) for t in self.inputs
        }


def draw(
    t: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, timesteps: np.ndarray | None = None
) -> np.ndarray:
    """Realistic values: timesteps drawn from `timesteps` (the snapshot's own schedule, as `check`
    passes it), else 0.25*ln(sigma) over SVD's default sigma range; time ids as used; LTX's token ids,
    padded text masks (at least one real token), flow-match and decode timesteps."""
    if t.dist == "token_ids":
        return rng.integers(0, t.high, shape)
    if t.dist == "text_mask":
        lengths = rng.integers(1, shape[-1] + 1, shape[:-1] + (1,))
        return (np.arange(shape[-1]) < lengths).astype(np.float64)
    if t.dist == "flow_timestep":
        if timesteps is not None:
            return rng.choice(np.asarray(timesteps, dtype=np.float64), shape)
        return rng.uniform(0.0, 1000.0, shape)
    if t.dist == "decode_timestep":
        return rng.uniform(0.0, 0.1, shape)
    if t.dist == "signed_unit":
        return rng.uniform(-1.0, 1.0, shape)
    if t.dist == "timestep":
        if timesteps is not None:
            return rng.choice(np.asarray(timesteps, dtype=np.float64), shape)
        return 0.25 * np.log(rng.uniform(0.002, 700.0, shape))
    if t.dist == "time_ids":
        fps_id = rng.integers(3, 30, shape[:-1] + (1,))
        motion = rng.integers(1, 255, shape[:-1] + (1,))
        aug = rng.uniform(0.0, 0.1, shape[:-1] + (1,))
        return np.concatenate([fps_id, motion, aug], axis=-1)
    return rng.standard_normal(shape)


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


# End to end, frames in [0, 1], by the lowest precision among the engines. fp32: per-call
# errors ~1e-6 stay ~1e-5 after a few Euler steps (> 90 dB); 50 dB (RMS 0.8 of 255 levels) is
# the bound. fp16: rounding is re-injected every step and guidance amplifies it; 30 dB (RMS 8
# levels) still means the same video, a broken engine is far below (noise ~10 dB).
# Quantized vs float pipeline, same noise: measured on the small random model int8 23.5-26.9 dB
# over 25 settings, while the float pipeline with merely another seed scores 17.9 dB; 20 dB
# separates "follows the float trajectory" from "an unrelated video". Random weights lack trained
# outliers, so this is a floor for catching broken quantization, not a quality claim.
QUANT_MIN_PSNR = 20.0
# Two pipelines' frames (in [0, 1]) on identical inputs agree when no element differs by more than
# this, by the lowest precision involved. fp32: per-call errors ~1e-6 (diffusers vs the port,
# engines vs the port) amplified at most by the step count; 1e-3 is 1/4 of an 8-bit level. fp16:
# diffusers rounds latents to fp16 after every step and its kernels round differently from ours;
# 3e-2 (8 levels) still means the same video. Used by the parity tests and the benchmarks.
FRAME_MAX_ABS = {"fp32": 1e-3, "fp16": 3e-2}
E2E_MIN_PSNR = {"fp32": 50.0, "fp16": 30.0, **dict.fromkeys(QUANTIZED_PRECISIONS, QUANT_MIN_PSNR)}


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
                TensorSpec("timestep", ("B",), dist="timestep", fixed_dtype="float32"),
                TensorSpec("encoder_hidden_states", ("B", 1, clip.projection_dim)),
                # fp32 in every precision: it feeds fp32 sinusoids (noise-aug strength 0.02 is not an fp16 value)
                TensorSpec("added_time_ids", ("B", cfg.unet.num_time_ids), dist="time_ids", fixed_dtype="float32"),
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
