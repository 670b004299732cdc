"""The request contract of the Triton models, declared once.

The repository writer renders these tensors into both models' config.pbtxt, the model
parses requests by them, and tests and docs/serving.md are checked against them. The
optional scalars are GenerationOptions' fields: their names and defaults live there,
and nowhere here. Datatypes are Triton's names (BYTES is TYPE_STRING in a config).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

# The one import of the options dataclass in the serving code.
from svd_trt.families.svd.options import GenerationOptions

MODEL = "svd"  # one response per request
STREAM_MODEL = "svd_stream"  # decoupled: progress responses, then the result
OUTPUT_FORMATS = ("mp4",)

# Seeds are 64-bit (numpy's default_rng takes any int; `svd-trt infer --seed` too); the
# other integers are sizes and counts.
_WIDE_INTS = frozenset({"seed"})
_SCALAR_TYPES = {int: "INT32", float: "FP32", bool: "BOOL", str: "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, Triton datatype, dims (-1 = any), whether a request may omit it."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class OptionField:
    """One GenerationOptions field as the contract sees it; default None = the model's own value."""

    name: str
    python_type: type
    default: object


def option_fields() -> tuple[OptionField, ...]:
    """GenerationOptions' fields with their scalar types (`int | None` -> int) and defaults."""
    hints = typing.get_type_hints(GenerationOptions)
    out = []
    for f in dataclasses.fields(GenerationOptions):
        types = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        if len(types) != 1 or types[0] not in _SCALAR_TYPES:
            raise TypeError(f"GenerationOptions.{f.name}: {hints[f.name]} has no Triton scalar type")
        out.append(OptionField(f.name, types[0], f.default))
    return tuple(out)


def _option_input(field: OptionField) -> TensorSpec:
    datatype = "INT64" if field.name in _WIDE_INTS else _SCALAR_TYPES[field.python_type]
    return TensorSpec(field.name, datatype, (1,), optional=True, doc=f"GenerationOptions.{field.name}")


IMAGE = TensorSpec("image", "BYTES", (1,), doc="an encoded PNG, JPEG or WebP file")
OUTPUT_FORMAT = TensorSpec("output_format", "BYTES", (1,), optional=True, doc="'mp4' adds `video`")
INPUTS: tuple[TensorSpec, ...] = (IMAGE, *map(_option_input, option_fields()), OUTPUT_FORMAT)

FRAMES = TensorSpec("frames", "UINT8", (-1, -1, -1, 3), doc="[F, H, W, 3] RGB")
VIDEO = TensorSpec("video", "BYTES", (1,), doc="H.264 mp4, only when output_format is 'mp4'")
OUTPUTS: tuple[TensorSpec, ...] = (FRAMES, VIDEO)
# svd_stream's progress responses carry only these two; its last response carries OUTPUTS.
PROGRESS: tuple[TensorSpec, ...] = (
    TensorSpec("step", "INT32", (1,), doc="denoising steps done"),
    TensorSpec("total", "INT32", (1,), doc="denoising steps in all"),
)


def outputs_of(model: str) -> tuple[TensorSpec, ...]:
    return OUTPUTS + PROGRESS if model == STREAM_MODEL else OUTPUTS
