"""The request contract of the Triton models, generated from the engines' family.

A family (svd_trt/family.py) declares its conditioning inputs (an image, a prompt: InputSpec) and
its generation options (a dataclass); the contract is those and nothing else: each conditioning
input is a BYTES [1] tensor (an encoded image file, or UTF-8 text), required where the family
requires it, and each option field an optional [1] scalar of its type, named and defaulted by the
field. The repository writer renders a contract into both models' config.pbtxt, the pipeline model
parses requests by it, and tests and docs/serving.md are checked against it. Datatypes are
Triton's names (BYTES is TYPE_STRING in a config).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

MODEL = "generate"  # one response per request
STREAM_MODEL = "generate_stream"  # decoupled: progress responses, then the result
OUTPUT_FORMATS = ("mp4",)

# Seeds are 64-bit (numpy's default_rng takes any int; `svd-trt infer --seed` too); the
# other integers are sizes and counts.
_WIDE_INTS = frozenset({"seed"})
_SCALAR_TYPES = {int: "INT32", float: "FP32", bool: "BOOL", str: "BYTES"}
# What a conditioning input's BYTES hold, by InputSpec.kind.
KIND_DOCS = {"image": "an encoded PNG, JPEG or WebP file", "text": "UTF-8 text"}


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
    """One field of a family's options as the contract sees it; default None = the model's own value."""

    name: str
    python_type: type
    default: object


def option_fields(options: type) -> tuple[OptionField, ...]:
    """The fields of an options dataclass with their scalar types (`int | None` -> int) and defaults."""
    hints = typing.get_type_hints(options)
    out = []
    for f in dataclasses.fields(options):
        types = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        if len(types) != 1 or types[0] not in _SCALAR_TYPES:
            raise TypeError(f"{options.__name__}.{f.name}: {hints[f.name]} has no Triton scalar type")
        out.append(OptionField(f.name, types[0], f.default))
    return tuple(out)


def _option_input(field: OptionField, options: type) -> TensorSpec:
    datatype = "INT64" if field.name in _WIDE_INTS else _SCALAR_TYPES[field.python_type]
    return TensorSpec(field.name, datatype, (1,), optional=True, doc=f"{options.__name__}.{field.name}")


OUTPUT_FORMAT = TensorSpec("output_format", "BYTES", (1,), optional=True, doc="'mp4' adds `video`")
FRAMES = TensorSpec("frames", "UINT8", (-1, -1, -1, 3), doc="[F, H, W, 3] RGB")
VIDEO = TensorSpec("video", "BYTES", (1,), doc="H.264 mp4, only when output_format is 'mp4'")
OUTPUTS: tuple[TensorSpec, ...] = (FRAMES, VIDEO)
# The stream model's progress responses carry only these two; its last response carries OUTPUTS.
PROGRESS: tuple[TensorSpec, ...] = (
    TensorSpec("step", "INT32", (1,), doc="denoising steps done"),
    TensorSpec("total", "INT32", (1,), doc="denoising steps in all"),
)


@dataclass(frozen=True)
class Contract:
    """One family's requests: its conditioning inputs, its options, the output format."""

    family: Any  # svd_trt.family.Family
    conditioning: tuple[TensorSpec, ...]  # the family's InputSpecs, in its order
    options: tuple[OptionField, ...]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Every input tensor, in config.pbtxt's order."""
        return (
            *self.conditioning,
            *(_option_input(f, self.family.options) for f in self.options),
            OUTPUT_FORMAT,
        )

    def datatypes(self) -> dict[str, str]:
        """input name -> Triton datatype (what a client needs to build a request)."""
        return {t.name: t.datatype for t in self.inputs}


def contract_for(family: Any) -> Contract:
    """The contract of `family`'s engines."""
    conditioning = tuple(
        TensorSpec(s.name, "BYTES", (1,), optional=not s.required, doc=KIND_DOCS[s.kind])
        for s in family.inputs
    )
    return Contract(family, conditioning, option_fields(family.options))


def outputs_of(model: str) -> tuple[TensorSpec, ...]:
    return OUTPUTS + PROGRESS if model == STREAM_MODEL else OUTPUTS
