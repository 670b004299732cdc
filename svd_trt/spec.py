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

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from svd_trt.errors import UserError

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
    # how sample inputs are drawn: "normal", "signed_unit", or a family's Draw (svd_trt/spec.py: draw)
    dist: str | Draw = "normal"
    fixed_dtype: str | None = None

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
            raise SpecError(f"no accuracy tolerance for {self.name} at {precision} (its family's spec.py)")
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


# A family's own distribution: (shape, rng, timesteps) -> values; `timesteps` are the snapshot's
# schedule where `check` passes them, else None.
Draw = Callable[[tuple[int, ...], np.random.Generator, "np.ndarray | None"], np.ndarray]


def draw(
    t: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, timesteps: np.ndarray | None = None
) -> np.ndarray:
    """Values in the range the pipeline feeds: standard normal, uniform in [-1, 1] (`signed_unit`),
    or the family's own distribution (a callable `dist`)."""
    if callable(t.dist):
        return t.dist(shape, rng, timesteps)
    if t.dist == "signed_unit":
        return rng.uniform(-1.0, 1.0, shape)
    if t.dist != "normal":
        raise SpecError(f"{t.name}: unknown sample distribution {t.dist!r}")
    return rng.standard_normal(shape)


def draw_from(timesteps: np.ndarray | None, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray | None:
    """Timesteps drawn from a schedule's (None where `check` passed none)."""
    if timesteps is None:
        return None
    return rng.choice(np.asarray(timesteps, dtype=np.float64), shape)


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
