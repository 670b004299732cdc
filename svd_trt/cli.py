"""What every command shares: generation options declared once, and one error handler.

`generation_options` turns GenerationOptions' fields (svd_trt/options.py: names, defaults, help)
into click options, so `svd-trt infer`, `svd-export check` and `svd-export calibrate` spell them
identically; a command may change a default (check: seed 0, 3 steps). `one_line_errors` is
the handler of all of them: an expected failure (`UserError`, a backend's exception that
svd_trt.errors.engine_failure recognizes, or a module of the [export] extra missing from a
runtime-only install) prints `Error: <one line>` and exits 2, Ctrl-C exits 130 without a
traceback; a backend's traceback is logged (shown with -v).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from svd_trt.errors import UserError, engine_failure
from svd_trt.options import FIELDS, GenerationOptions, flag

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # a check ran and found a problem (svd-export check, verify)
EXIT_USAGE = 2  # an expected failure: bad input, a missing or unreadable file
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# The [export] extra's import names (pyproject.toml): `pip install svd-trt` has none of them, and
# every svd-export command that needs one says so in one line instead of a traceback.
EXPORT_MODULES = ("torch", "onnx", "safetensors", "polygraphy")
PIP_EXPORT = "pip install 'svd-trt[export]'"

# Older spellings kept working: calibrate took --frames and --steps before the options were shared.
ALIASES = {"num_frames": ("--frames",), "num_inference_steps": ("--steps",)}


def fail(message: str) -> None:
    """Print one line and exit 2: the end of every expected failure."""
    click.echo(f"Error: {str(message).splitlines()[0] if message else 'failed'}", err=True)
    sys.exit(EXIT_USAGE)


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one line for a module of an optional extra that is not installed; None for any other."""
    root = (e.name or "").partition(".")[0]
    if root in EXPORT_MODULES:
        return f"this command needs the export tools ({root} is not installed): {PIP_EXPORT}"
    return None


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: UserError, a backend failure or a missing [export] module -> one line and exit 2;
    Ctrl-C -> exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except ModuleNotFoundError as e:
            message = missing_extra(e)
            if message is None:
                raise  # a broken install or a bug: keep the traceback
            fail(message)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:
            expected = engine_failure(e)
            if expected is None:
                raise  # a bug: keep the traceback
            log.info("%s", expected, exc_info=e)
            fail(str(expected))

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
