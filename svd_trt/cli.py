"""What every command shares: generation options declared once, and one error handler.

`generation_options` turns GenerationOptions' fields (svd_trt/options.py: names, defaults, help)
into click options, so `svd-trt infer`, `svd-export check` and `svd-export calibrate` spell them
identically; a command may change a default (check: seed 0, 3 steps). `one_line_errors` is
the handler of all of them: an expected failure (`UserError`) prints `Error: <one line>` and
exits 2, Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from svd_trt.errors import UserError
from svd_trt.options import FIELDS, GenerationOptions, flag

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# Older spellings kept working: calibrate took --frames and --steps before the options were shared.
ALIASES = {"num_frames": ("--frames",), "num_inference_steps": ("--steps",)}


def fail(message: str) -> None:
    """Print one line and exit 2: the end of every expected failure."""
    click.echo(f"Error: {str(message).splitlines()[0] if message else 'failed'}", err=True)
    sys.exit(EXIT_USAGE)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: UserError -> one line and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def _click_type(name: str) -> type:
    return float if FIELDS[name].type.startswith("float") else int


def generation_options(*names: str, **defaults: Any) -> Callable[[Callable], Callable]:
    """click options for these GenerationOptions fields (all when none named); `defaults` override."""
    chosen = names or tuple(FIELDS)

    def decorate(command: Callable) -> Callable:
        for name in reversed(chosen):
            f = FIELDS[name]
            default = defaults.get(name, f.default)
            command = click.option(
                flag(name),
                *ALIASES.get(name, ()),
                name,
                type=_click_type(name),
                default=default,
                show_default=default is not None,
                help=f.metadata["help"],
            )(command)
        return command

    return decorate


def pop_generation(kwargs: dict[str, Any]) -> GenerationOptions:
    """Take the generation fields out of a command's keyword arguments."""
    return GenerationOptions(**{name: kwargs.pop(name) for name in list(kwargs) if name in FIELDS})
