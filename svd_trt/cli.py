"""What every command shares: generation options declared once, and one error handler.

`generation_options` turns the families' generation fields (families/<name>/options.py: names,
defaults, help) into click options, so `svd-trt infer`, `svd-export check` and `svd-export
calibrate` spell them identically; the engine directory's family decides which apply and their
defaults (`pop_generation`); a command may change a default (check: seed 0, 3 steps). `one_line_errors` is
the handler of all of them: an expected failure (`UserError`, a backend's exception that
svd_trt.errors.engine_failure recognizes, or a module of the [export] extra missing from a
runtime-only install) prints `Error: <one line>` and exits 2, Ctrl-C exits 130 without a
traceback; a backend's traceback is logged (shown with -v).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from svd_trt.errors import UserError, engine_failure
from svd_trt.family import all_families
from svd_trt.options import flag

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


def _union_fields(families: Sequence[Any]) -> dict[str, list[tuple[Any, dataclasses.Field]]]:
    """Option name -> [(family, field)] over the families' options dataclasses, in declaration order."""
    fields: dict[str, list[tuple[Any, dataclasses.Field]]] = {}
    for family in families:
        for f in dataclasses.fields(family.options):
            fields.setdefault(f.name, []).append((family, f))
    return fields


def _click_type(f: dataclasses.Field) -> type:
    text = str(f.type)
    return bool if text.startswith("bool") else float if text.startswith("float") else int


def _default_text(owners: list[tuple[Any, dataclasses.Field]], defaults: dict[str, Any]) -> str:
    """[default: 25] where the families agree, else [default: SVD 25, LTX-Video 50]."""
    values = [(family, defaults.get(f.name, f.default)) for family, f in owners]
    if all(v is None for _, v in values):
        return ""
    if len({repr(v) for _, v in values}) == 1:
        return f" [default: {values[0][1]}]"
    return " [default: " + ", ".join(f"{fam.title} {v}" for fam, v in values if v is not None) + "]"


def generation_options(*names: str, families: Sequence[Any] | None = None, **defaults: Any) -> Callable:
    """click options for the generation fields of `families` (default: every family; only `names`
    when given). Each defaults to None, meaning the engines' family's own default (or `defaults`,
    a command's own, such as check's seed 0); pop_generation builds that family's options."""
    fields = _union_fields(families if families is not None else all_families())
    chosen = names or tuple(fields)

    def decorate(command: Callable) -> Callable:
        for name in reversed(chosen):
            owners = fields[name]
            f = owners[0][1]
            kind = _click_type(f)
            spelling = f"{flag(name)}/--no-{flag(name)[2:]}" if kind is bool else flag(name)
            only = "" if len(owners) == len(all_families()) else f" ({', '.join(fam.title for fam, _ in owners)})"
            command = click.option(
                spelling,
                *ALIASES.get(name, ()),
                name,
                type=None if kind is bool else kind,
                default=None,
                help=f.metadata["help"] + only + _default_text(owners, defaults),
            )(command)
        return command

    return decorate


def _take_given(kwargs: dict[str, Any], names: set[str], family: Any, own: set[str]) -> dict[str, Any]:
    """Pop every one of `names` (all families' options of one kind) out of a command's keyword
    arguments; the values given (not None). One `family` does not take (not in `own`) is a UserError."""
    given = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
    given = {name: value for name, value in given.items() if value is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise UserError(f"{flag(foreign[0])} does not apply to {family.title} engines")
    return given


def _by_name(kind: str) -> dict[str, list[tuple[Any, Any]]]:
    """Every family's InputSpecs (`kind` "inputs") or DrawSpecs ("draws"): name -> [(family, spec)]."""
    specs: dict[str, list[tuple[Any, Any]]] = {}
    for family in all_families():
        for spec in getattr(family, kind):
            specs.setdefault(spec.name, []).append((family, spec))
    return specs


def pop_generation(kwargs: dict[str, Any], family: Any, defaults: dict[str, Any] | None = None) -> Any:
    """Take every generation field out of a command's keyword arguments and build `family`'s options:
    the values given, then `defaults` (a command's own), then the family's. A given option the
    family does not take is a UserError (one line)."""
    own = {f.name for f in dataclasses.fields(family.options)}
    given = _take_given(kwargs, set(_union_fields(all_families())), family, own)
    values = {k: v for k, v in (defaults or {}).items() if k in own}
    return family.options(**{**values, **given})


def input_options(command: Callable) -> Callable:
    """--image, --prompt, ...: every family's conditioning inputs (svd_trt/family.py InputSpec)."""
    for name, owners in reversed(_by_name("inputs").items()):
        spec = owners[0][1]
        needs = ", ".join(f"{fam.title}: {'required' if s.required else 'optional'}" for fam, s in owners)
        command = click.option(
            flag(name),
            name,
            type=click.Path(dir_okay=False) if spec.kind == "image" else str,
            default=None,
            help=f"{spec.help} ({needs})",
        )(command)
    return command


def pop_inputs(kwargs: dict[str, Any], family: Any, required: bool = True) -> dict[str, Any]:
    """Take every conditioning input out of a command's keyword arguments: `family`'s given ones.
    A required one missing (when `required`) or one the family does not take is a UserError."""
    own = {spec.name: spec for spec in family.inputs}
    given = _take_given(kwargs, set(_by_name("inputs")), family, set(own))
    missing = [name for name, spec in own.items() if spec.required and name not in given]
    if required and missing:
        raise UserError(f"{family.title} engines need {flag(missing[0])}")
    return given


def draw_options(command: Callable) -> Callable:
    """--latents, --image-noise, ...: every family's random draws a user may give as .npy files."""
    for name, owners in reversed(_by_name("draws").items()):
        helps = "; ".join(f"{fam.title}: {s.help}" for fam, s in owners)
        command = click.option(flag(name), name, type=click.Path(dir_okay=False), default=None, help=helps)(command)
    return command


def pop_draws(kwargs: dict[str, Any], family: Any) -> dict[str, Any]:
    """Take every draw option out of a command's keyword arguments: `family`'s given ones (files)."""
    return _take_given(kwargs, set(_by_name("draws")), family, {spec.name for spec in family.draws})
