"""`svd-export calibrate` and `svd-export quantize`: thin commands over the calibration library.

Registered on the `svd-export` group by engines/cli.py (`main.add_command(...)`); expected
failures are one line on stderr with exit code 2, as the other svd-export commands.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from svd_trt.cli import fail, generation_options, one_line_errors

# Calibration records the UNet's inputs at the real generation size, but over several runs with
# a fixed base seed (each run offsets it), so recorded data is reproducible.
CALIBRATE_DEFAULTS = {"seed": 0}


def _engines_for(snapshot: str | None, engines: str | None, out: Path) -> Path:
    """The fp32 ONNX Runtime engines to run: given, or exported from the snapshot into OUT/engines."""
    if bool(snapshot) == bool(engines):
        fail("give exactly one of --model and --engines")
    if engines:
        return Path(engines)
    from svd_trt.export.onnx_export import build_onnx_dir

    build_onnx_dir(snapshot, out / "engines")  # reused when the snapshot has not changed
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
@generation_options("num_frames", "height", "width", "num_inference_steps", "seed", **CALIBRATE_DEFAULTS)
@click.option(
    "--max-mb",
    type=click.FloatRange(0),
    default=1024,
    show_default=True,
    help="Cap on the recorded data; calls are subsampled evenly past it.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="ONNX Runtime device.",
)
@one_line_errors
def calibrate(
    snapshot, engines, images, out, runs, num_inference_steps, num_frames, height, width, max_mb, seed, device
) -> None:
    """Record the UNet inputs of real pipeline runs into OUT (INT8 calibration data)."""
    from svd_trt.calibration.capture import capture_calibration
    from svd_trt.families.svd.options import GenerationOptions

    start = time.perf_counter()
    out_dir = Path(out)
    engine_dir = _engines_for(snapshot, engines, out_dir)
    index = capture_calibration(
        engine_dir,
        list(images) or None,
        out_dir,
        GenerationOptions(
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            seed=seed,
        ),
        runs=runs,
        max_bytes=int(max_mb * 2**20),
        device=device,
    )
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
@click.option(
    "--precision",
    type=click.Choice(["int8"]),
    default="int8",
    show_default=True,
    help="ONNX Runtime's quantizer makes int8 for ONNX Runtime; fp8 UNets come from "
    "build-engines --backend tensorrt --unet-precision fp8 (Model Optimizer).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="New engine directory. [default: ENGINES, replaced whole when the quantized one is complete]",
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
@one_line_errors
def quantize(engines, calib_dir, precision, out, method, exclude, per_tensor) -> None:
    """Quantize the UNet of ENGINES with QDQ nodes calibrated on CALIBRATION."""
    from svd_trt.calibration.quantize import DEFAULT_EXCLUDE, quantize_unet

    start = time.perf_counter()
    groups = () if exclude == ("none",) else (exclude or DEFAULT_EXCLUDE)
    path = quantize_unet(engines, calib_dir, precision, out, groups, method, per_channel=not per_tensor)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
