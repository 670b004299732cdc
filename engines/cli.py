"""`svd-export`: checkpoints to engine directories, and their accuracy checks.

Each command parses its options, builds one options object and calls one library
function; expected failures are one line on stderr with exit code 2 (svd_trt/cli.py).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from svd_trt.cli import EXIT_FAILED, fail, one_line_errors
from svd_trt.family import all_families, family_named
from svd_trt.options import flag
from svd_trt.spec import ENGINE_BACKENDS, FLOAT_PRECISIONS, QUANTIZED_PRECISIONS

log = logging.getLogger("svd_trt")

PRECISIONS = FLOAT_PRECISIONS + QUANTIZED_PRECISIONS


def _parse_precisions(items: tuple[str, ...]) -> dict[str, str]:
    """`unet=fp16` pairs into a dict."""
    out = {}
    for item in items:
        name, sep, precision = item.partition("=")
        if not sep or precision not in PRECISIONS:
            raise click.BadParameter(
                f"{item!r}: expected COMPONENT=fp32|fp16 (int8|fp8 where the family quantizes it)",
                param_hint="--precision",
            )
        out[name] = precision
    return out


# The families come from the registry: a third one is named here without an edit.
@click.group(
    help="svd-export: video diffusion checkpoints "
    f"({', '.join(f.title for f in all_families())}) to ONNX Runtime / TensorRT engines."
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@main.command("make-checkpoint")
@click.option(
    "--family",
    type=click.Choice([f.name for f in all_families()]),
    default=all_families()[0].name,
    show_default=True,
    help="Which model family's snapshot to write.",
)
@click.option(
    "--size",
    type=click.Choice(sorted({p for f in all_families() for p in f.presets})),
    default="small",
    show_default=True,
    help="; ".join(f"{f.name}: {', '.join(f.presets)}" for f in all_families()),
)
@click.option("--out", required=True, type=click.Path(), help="Snapshot directory to write.")
@click.option("--variant", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--num-frames", type=int, default=None, help="The denoiser's default frame count (where it has one).")
@click.option("--seed", type=int, default=0, show_default=True)
@one_line_errors
def make_checkpoint(family: str, size: str, out: str, variant: str, num_frames: int | None, seed: int) -> None:
    """Write a random-weight snapshot (Hugging Face layout) of a named size."""
    chosen = family_named(family)
    if size not in chosen.presets:
        fail(f"--size {size}: {chosen.title} has {', '.join(chosen.presets)}")
    extra = {"num_frames": num_frames} if num_frames is not None else {}
    start = time.perf_counter()
    path = chosen.write_random_checkpoint(out, size, None if variant == "fp32" else variant, seed, **extra)
    click.echo(f"wrote {size} random {chosen.title} checkpoint to {path} in {time.perf_counter() - start:.1f} s")


class _Progress:
    """A tqdm bar opened at the first finished component, so an early error prints alone."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, name: str, status: str, seconds: float) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="component")
        self.bar.set_postfix_str(f"{name} {status} {seconds:.1f}s")
        self.bar.write(f"{name}: {status} in {seconds:.1f} s")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# An existing OUT is rebuilt in place (unchanged components reused) when it is an engine directory
# svd-trt wrote and holds nothing else; anything else is refused (svd_trt/output_dir.py).
FORCE = click.option(
    "--force",
    is_flag=True,
    help="Also replace an engine directory of ours whose manifest cannot be read (another format "
    "version, damaged). Never replaces a directory holding files svd-trt did not write.",
)

VARIANT = click.option(
    "--variant",
    type=click.Choice(["auto", "fp32", "fp16"]),
    default="auto",
    show_default=True,
    help="Which weight files of the snapshot to read.",
    # the loaders' variant: None reads the plain (fp32) files
    callback=lambda ctx, param, value: {"fp32": None}.get(value, value),
)


@main.command("export-onnx")
@click.option(
    "--model", "snapshot", required=True, type=click.Path(), help="diffusers snapshot directory (its model_index.json names the family)."
)
@click.option("--out", required=True, type=click.Path(), help="ONNX directory to write.")
@click.option(
    "--target",
    type=click.Choice(ENGINE_BACKENDS),
    default="onnxruntime",
    show_default=True,
    help="Whom the graphs are for. tensorrt: the exact files build-engines --backend tensorrt builds "
    "from (strongly typed fp16 CLIP and UNet with fp32 islands, fp32 VAE); they run in ONNX Runtime too.",
)
@click.option(
    "--precision", "precisions", multiple=True, help="COMPONENT=fp32|fp16, e.g. unet=fp32 (repeatable)."
)
@click.option(
    "--unet-precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="The UNet's precision (same as --precision unet=...). int8 / fp8 (--target tensorrt, with "
    "--calibration): the Q/DQ UNet build-engines --backend tensorrt builds, fp16 where not quantized.",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    default=None,
    help="int8 / fp8 UNet: calibration directory from `svd-export calibrate`.",
)
@VARIANT
@FORCE
@one_line_errors
def export_onnx_command(
    snapshot: str,
    out: str,
    target: str,
    precisions: tuple[str, ...],
    unet_precision: str | None,
    calibration: str | None,
    variant: str | None,
    force: bool,
) -> None:
    """Export every component of MODEL to ONNX for TARGET into OUT, without TensorRT."""
    from svd_trt.engines.build import export_onnx

    parsed = _parse_precisions(precisions)
    if unet_precision:
        parsed["unet"] = unet_precision
    start = time.perf_counter()
    progress = _Progress(4 + (parsed.get("unet") in QUANTIZED_PRECISIONS), f"onnx for {target}")
    try:
        manifest = export_onnx(
            snapshot, out, target, parsed, variant, progress, force, Path(calibration) if calibration else None
        )
    finally:
        progress.close()
    chosen = ", ".join(f"{n} {e.precision}" for n, e in manifest.components.items())
    click.echo(f"wrote ONNX for {target} ({chosen}) to {out} in {time.perf_counter() - start:.1f} s")


def _range(text: str | None, option: str) -> tuple[int, int] | None:
    from svd_trt.limits import parse_range

    return parse_range(text, option) if text is not None else None


def served_size_options(command):
    """--num-frames, --height, ... : every family's limit names (the sizes an engine directory serves)."""
    names = list(dict.fromkeys(n for f in all_families() for n in f.limit_names))
    for name in reversed(names):
        command = click.option(
            flag(name),
            name,
            default=None,
            help=f"{name.replace('_', ' ').capitalize()} the engines serve, N or MIN:MAX. "
            "[default: TensorRT the model's default; ONNX Runtime any]",
        )(command)
    return command


@main.command("build-engines")
@click.option(
    "--model", "snapshot", required=True, type=click.Path(), help="diffusers snapshot directory (its model_index.json names the family)."
)
@click.option("--out", required=True, type=click.Path(), help="Engine directory to write.")
@click.option(
    "--backend", type=click.Choice(ENGINE_BACKENDS), default="onnxruntime", show_default=True
)
@click.option(
    "--precision", "precisions", multiple=True, help="COMPONENT=fp32|fp16, e.g. unet=fp16 (repeatable)."
)
@click.option(
    "--unet-precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="A UNet's precision (same as --precision unet=...); int8 / fp8 need --calibration. "
    "[default: the spec's for the backend: fp32 for onnxruntime, fp16 for tensorrt]",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    default=None,
    help="int8 / fp8 UNet: calibration directory from `svd-export calibrate`.",
)
@VARIANT
@served_size_options
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="TensorRT: tactic timing cache shared across builds. [default: per TensorRT + GPU in ~/.cache/svd-trt]",
)
@FORCE
@one_line_errors
def build_engines(
    snapshot: str,
    out: str,
    backend: str,
    precisions: tuple[str, ...],
    unet_precision: str | None,
    calibration: str | None,
    variant: str | None,
    timing_cache: str | None,
    force: bool,
    **sizes: str | None,
):
    """Export every component of MODEL and build the engines into OUT."""
    from svd_trt.engines.build import BuildOptions, build_engines

    if backend != "tensorrt" and timing_cache is not None:
        fail("--timing-cache applies to --backend tensorrt only")
    parsed = _parse_precisions(precisions)
    if unet_precision:
        parsed["unet"] = unet_precision
    request = {name: _range(value, flag(name)) for name, value in sizes.items() if value is not None}
    options = BuildOptions(
        backend,
        request,
        parsed,
        variant=variant,
        calibration=Path(calibration) if calibration else None,
        timing_cache=Path(timing_cache) if timing_cache else None,
        force=force,
    )
    start = time.perf_counter()
    progress = _Progress((8 if backend == "tensorrt" else 4) + bool(options.quantized), backend)
    try:
        manifest = build_engines(snapshot, out, options, on_component=progress)
    finally:
        progress.close()  # an error is the last line
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
    click.echo(
        f"wrote {len(manifest.components)} {backend} components ({size:.1f} MiB) to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


@main.command("verify")
@click.option("--engines", "engine_dir", required=True, type=click.Path(), help="Engine directory to verify.")
@one_line_errors
def verify_command(engine_dir: str) -> None:
    """Hash every file of ENGINES against its manifest: a changed or truncated byte is named.

    Exit 0: intact. 1: damage found (one line per problem, then a summary). 2: not an engine
    directory, another format version, or a file that cannot be read."""
    from svd_trt.manifest import verify

    start = time.perf_counter()
    try:
        problems, count = verify(engine_dir)
    except OSError as e:
        fail(f"{engine_dir}: cannot read {e.filename or 'a file'} ({e.strerror or e})")
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        click.echo(f"Error: {engine_dir}: {len(problems)} problem(s) found; rebuild the engines", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"{engine_dir}: {count} files match the manifest ({time.perf_counter() - start:.1f} s)")


def _register() -> None:
    """The commands that live beside their libraries."""
    from svd_trt.calibration.cli import calibrate, quantize
    from svd_trt.engines.check_cli import check
    from svd_trt.runtime.serving.cli import triton_repo

    for command in (check, calibrate, quantize, triton_repo):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
