"""What every family's generation options share: fields with their command-line help, flags, and the
checks every family runs (positive sizes, finite floats, the size rule, the sizes an engine
directory serves).

Each family declares its own options dataclass (families/<name>/options.py) with `option` fields;
svd_trt/cli.py turns them into click options and runtime/serving/contract.py into Triton inputs.
numpy-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

from svd_trt.errors import UserError
from svd_trt.spec import Span


class PipelineError(UserError, ValueError):
    """Bad input to a generation: the message is one line."""


def option(default: Any, help: str) -> Any:
    """A generation option's dataclass field with its command-line help."""
    return field(default=default, metadata={"help": help})


def flag(name: str) -> str:
    """The command-line spelling of an option field: --num-frames."""
    return "--" + name.replace("_", "-")


def fields_of(options: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(options)}


def check_common(
    opts: Any,
    positive: Iterable[str],
    floats: Iterable[str],
    size_unit: int,
    limits: Mapping[str, Span] | None = None,
) -> None:
    """PipelineError (one line) for a non-positive size or count, a non-finite float, a height or width
    off the size rule, or a value outside the sizes the engine directory serves (`limits`)."""
    for name in positive:
        if getattr(opts, name) <= 0:
            raise PipelineError(f"{flag(name)} must be positive, got {getattr(opts, name)}")
    for name in floats:
        value = getattr(opts, name)
        if value is not None and not math.isfinite(value):
            raise PipelineError(f"{flag(name)} must be a finite number, got {value}")
    if opts.height % size_unit or opts.width % size_unit:
        raise PipelineError(f"height and width must be multiples of {size_unit}, got {opts.height}x{opts.width}")
    for name, span in (limits or {}).items():
        value = getattr(opts, name)
        if not span.contains(value):
            raise PipelineError(
                f"{flag(name)} {value} is outside the {span.text()} these engines serve; "
                f"rebuild them with a {flag(name)} range that covers it"
            )
