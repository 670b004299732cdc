"""`svd-export calibrate` and `svd-export quantize`: thin commands over the calibration library.

Registered on the `svd-export` group by engines/cli.py (`main.add_command(...)`); expected
failures are one line on stderr with exit code 2, as the other svd-export commands.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _expected_errors() -> tuple[type[Exception], ...]:
    from svd_trt.calibration.capture import CalibrationError
    from svd_trt.calibration.dataset import CalibrationDataError
    from svd_trt.calibration.quantize import QuantizeError
    from svd_trt.manifest import ManifestError
    from svd_trt.runtime.pipeline import PipelineError

    return CalibrationError, CalibrationDataError, QuantizeError, ManifestError, PipelineError


def _engines_for(snapshot: str | None, engines: str | None, out: Path) -> Path:
    """The fp32 ONNX Runtime engines to run: given, or exported from the snapshot into OUT/engines."""
    if bool(snapshot) == bool(engines):
        _fail("give exactly one of --model and --engines")
    if engines:
        return Path(engines)
    from svd_trt.export.checkpoint import CheckpointError
    from svd_trt.export.onnx_export import build_onnx_dir

    try:
        build_onnx_dir(snapshot, out / "engines")  # reused when the snapshot has not changed
    except CheckpointError as e:
        _fail(str(e).splitlines()[0])
    return out / "engines"


@click.command("calibrate")
@click.option(
    "--model",
    "snapshot",
    type=click.Path(),
    help="diffusers SVD snapshot (fp32 ONNX engines are built into OUT/engines).",
)
@click.option(
    "--engines", type=click.Path(), help="An fp32 ONNX Runtime engine directory instead of --model."
)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(exists=True),
    help="Image files or directories (repeatable). [default: the shipped runtime/assets/*.jpg]",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Calibration directory to write."
)
@click.option(
    "--runs",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Pipeline runs (image, seed, motion bucket, noise aug vary).",
)
@click.option(
    "--steps", type=click.IntRange(1), default=25, show_default=True, help="Denoising steps per run."
)
@click.option("--frames", type=click.IntRange(1), default=None, help="Frames per run. [default: the model's]")
@click.option("--height", type=int, default=576, show_default=True)
@click.option("--width", type=int, default=1024, show_default=True)
@click.option(
    "--max-mb",
    type=click.FloatRange(0),
    default=1024,
    show_default=True,
    help="Cap on the recorded data; calls are subsampled evenly past it.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="ONNX Runtime device.",
)
def calibrate(
    snapshot, engines, images, out, runs, steps, frames, height, width, max_mb, seed, device
) -> None:
    """Record the UNet inputs of real pipeline runs into OUT (INT8 calibration data)."""
    from svd_trt.calibration.capture import capture_calibration

    start = time.perf_counter()
    out_dir = Path(out)
    engine_dir = _engines_for(snapshot, engines, out_dir)
    try:
        index = capture_calibration(
            engine_dir,
            list(images) or None,
            out_dir,
            runs=runs,
            steps=steps,
            frames=frames,
            height=height,
            width=width,
            max_bytes=int(max_mb * 2**20),
            seed=seed,
            device=device,
        )
    except _expected_errors() as e:
        _fail(str(e).splitlines()[0])
    click.echo(
        f"recorded {index['calls_kept']} of {index['calls_total']} UNet calls "
        f"({index['bytes'] / 2**20:.1f} MiB) to {out_dir} in {time.perf_counter() - start:.1f} s"
        + (" (subsampled: size cap)" if index["subsampled"] else "")
    )


@click.command("quantize")
@click.option(
    "--engines", required=True, type=click.Path(), help="ONNX Runtime engine directory with an fp32 UNet."
)
@click.option(
    "--calibration",
    "calib_dir",
    required=True,
    type=click.Path(),
    help="Directory written by svd-export calibrate.",
)
@click.option("--precision", type=click.Choice(["int8", "fp8"]), default="int8", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="New engine directory. [default: quantize ENGINES in place]",
)
@click.option(
    "--method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="Activation range calibration.",
)
@click.option(
    "--exclude",
    multiple=True,
    help="Kept float: a group (embeddings, conv_io, attention_softmax) or a node-name pattern; 'none' for no exclusions (repeatable). [default: all three groups]",
)
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
def quantize(engines, calib_dir, precision, out, method, exclude, per_tensor) -> None:
    """Quantize the UNet of ENGINES with QDQ nodes calibrated on CALIBRATION."""
    from svd_trt.calibration.quantize import DEFAULT_EXCLUDE, quantize_unet

    start = time.perf_counter()
    groups = () if exclude == ("none",) else (exclude or DEFAULT_EXCLUDE)
    try:
        path = quantize_unet(engines, calib_dir, precision, out, groups, method, per_channel=not per_tensor)
    except _expected_errors() as e:
        _fail(str(e).splitlines()[0])
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
