"""The request sizes an engine directory serves: ranges as the user gives them (`N` or `MIN:MAX`),
checked, and turned into Spans (min, the size engines are tuned for, max). Each family's
`served_limits` (families/<name>/spec.py) applies its own rules with these. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping

from svd_trt.errors import UserError
from svd_trt.spec import Span

Range = tuple[int, int | None]  # (min, max); max None = unbounded
# What build-engines asks for, by the family's limit names: a Range, a single int, or None = the
# family's default for the backend.
Request = Mapping[str, "Range | int | None"]


class RangeError(UserError, ValueError):
    """A bad size range; the message is one line naming the option."""


def parse_range(text: str, option: str) -> tuple[int, int]:
    """`14` -> (14, 14), `8:25` -> (8, 25); RangeError names `option`."""
    lo, sep, hi = text.strip().partition(":")
    try:
        pair = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        raise RangeError(f"{option} {text!r}: expected N or MIN:MAX, e.g. 14 or 8:25") from None
    check_pair(pair, option)
    return pair


def check_pair(pair: Range, option: str) -> None:
    lo, hi = pair
    if lo <= 0 or (hi is not None and hi <= 0):
        raise RangeError(f"{option} {lo}:{hi}: values must be positive")
    if hi is not None and lo > hi:
        raise RangeError(f"{option} {lo}:{hi}: min {lo} is larger than max {hi}")


def requested(request: Request, name: str, default: Range) -> Range:
    """The range asked for `name` (a single N is N:N), or `default` where none was asked."""
    value = request.get(name)
    if value is None:
        return default
    return (value, value) if isinstance(value, int) else value


def check_pixel_ranges(height: Range, width: Range, unit: int) -> None:
    """RangeError unless both ranges' bounds are multiples of `unit` pixels."""
    for option, (lo, hi) in (("--height", height), ("--width", width)):
        if lo % unit or (hi is not None and hi % unit):
            raise RangeError(f"{option} {lo}:{hi}: this model needs multiples of {unit} pixels")


def span(pair: Range, default: int, unit: int = 1) -> Span:
    """opt = the default (rounded down to `unit`) clamped into the range."""
    lo, hi = pair
    opt = max(default // unit * unit, lo)
    return Span(lo, opt if hi is None else min(opt, hi), hi)
