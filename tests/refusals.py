"""What every test of a memory refusal checks of `svd-trt infer`: exit 2 with one line, and nothing of
the request's size allocated before it (numpy's arrays are traced by tracemalloc)."""

from __future__ import annotations

import tracemalloc

import click
from click.testing import CliRunner, Result

REFUSAL = "Error: this request needs about "


def invoke_traced(main: click.Command, args: list[str]) -> tuple[Result, int]:
    """The command's result and the peak of the Python allocations (numpy's included) it made."""
    tracemalloc.start()
    try:
        result = CliRunner().invoke(main, args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def refusal_line(result: Result) -> str:
    """The one line of a memory refusal (exit 2)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(REFUSAL), lines
    return lines[0]
