"""`svd-export`: checkpoints to engine directories, and their accuracy checks.

Each command parses its options, builds one options object and calls one library
function; expected failures are one line on stderr with exit code 2.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from svd_trt.manifest import QUANTIZED_PRECISIONS

log = logging.getLogger("svd_trt")


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _parse_precisions(items: tuple[str, ...]) -> dict[str, str]:
    """`unet=fp16` pairs into a dict."""
    out = {}
    for item in items:
        name, sep, precision = item.partition("=")
        if not sep or precision not in ("fp32", "fp16", "int8", "fp8"):
            raise click.BadParameter(
                f"{item!r}: expected COMPONENT=fp32|fp16 (unet also int8|fp8)", param_hint="--precision"
            )
        out[name] = precision
    return out


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """svd-export: Stable Video Diffusion checkpoints to ONNX Runtime / TensorRT engines."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@main.command("make-checkpoint")
@click.option(
    "--size", type=click.Choice(["tiny", "small", "full", "full-14"]), default="small", show_default=True
)
@click.option("--out", required=True, type=click.Path(), help="Snapshot directory to write.")
@click.option("--variant", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--num-frames", type=int, default=None, help="The UNet's default frame count.")
@click.option("--seed", type=int, default=0, show_default=True)
def make_checkpoint(size: str, out: str, variant: str, num_frames: int | None, seed: int) -> None:
    """Write a random-weight SVD snapshot (Hugging Face layout) of a named size."""
    from svd_trt.config import preset
    from svd_trt.export.random_checkpoint import write_random_checkpoint

    start = time.perf_counter()
    path = write_random_checkpoint(
        out, preset(size, num_frames), None if variant == "fp32" else variant, seed
    )
    click.echo(f"wrote {size} random checkpoint to {path} in {time.perf_counter() - start:.1f} s")


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


def _trt_options(
    precisions, variant, calibration, num_frames, height, width, decode_chunk_size, timing_cache
):
    """The TensorRT build's options object; range errors are one-line ValueErrors."""
    from svd_trt.engines.profiles import DEFAULT_HEIGHT, DEFAULT_WIDTH, ProfileRequest, parse_range
    from svd_trt.engines.tensorrt_build import TrtBuildOptions

    request = ProfileRequest(
        num_frames=parse_range(num_frames, "--num-frames") if num_frames is not None else None,
        height=parse_range(height or str(DEFAULT_HEIGHT), "--height"),
        width=parse_range(width or str(DEFAULT_WIDTH), "--width"),
        decode_chunk_size=decode_chunk_size,
    )
    cache = Path(timing_cache) if timing_cache else None
    calib = Path(calibration) if calibration else None
    return TrtBuildOptions(request, precisions, timing_cache=cache, variant=variant, calibration=calib)


def _build_onnxruntime(snapshot, out, precisions: dict, variant, calibration, progress):
    """ONNX files for ONNX Runtime; an int8 UNet is quantized from its fp32 export in place."""
    from svd_trt.calibration.quantize import check_request, quantize_unet
    from svd_trt.export.onnx_export import build_onnx_dir
    from svd_trt.manifest import load_manifest

    unet = precisions.get("unet")
    quantized = unet in QUANTIZED_PRECISIONS
    if quantized:
        check_request(unet)  # fp8: a one-line QuantizeError before the export
    if quantized and not calibration:
        _fail(f"--unet-precision {unet} needs --calibration DIR (svd-export calibrate)")
    export_precisions = {**precisions, "unet": "fp32"} if quantized else precisions
    manifest = build_onnx_dir(
        snapshot, out, "onnxruntime", export_precisions, variant=variant, on_component=progress
    )
    if not quantized:
        return manifest
    start = time.perf_counter()
    quantize_unet(out, calibration, unet)
    progress(f"unet {unet} q/dq", "quantized", time.perf_counter() - start)
    return load_manifest(out)


def _build(snapshot: str, out: str, backend: str, precisions: dict, variant, calibration, trt_args: dict):
    """Run the backend's library function; expected failures are one line."""
    from svd_trt.calibration.dataset import CalibrationDataError
    from svd_trt.calibration.quantize import QuantizeError
    from svd_trt.engines.profiles import RangeError
    from svd_trt.engines.tensorrt_build import BuildError, build_tensorrt_dir
    from svd_trt.export.checkpoint import CheckpointError
    from svd_trt.manifest import ManifestError

    steps = (8 if backend == "tensorrt" else 4) + (precisions.get("unet") in QUANTIZED_PRECISIONS)
    progress = _Progress(steps, backend)
    try:
        if backend == "tensorrt":
            options = _trt_options(precisions, variant, calibration, **trt_args)
            return build_tensorrt_dir(snapshot, out, options, on_component=progress)
        return _build_onnxruntime(snapshot, out, precisions, variant, calibration, progress)
    # ManifestError includes TrtError: TensorRT or a GPU missing here.
    except (
        CheckpointError,
        ManifestError,
        RangeError,
        BuildError,
        QuantizeError,
        CalibrationDataError,
    ) as e:
        progress.close()  # the error is the last line
        _fail(str(e).splitlines()[0])
    finally:
        progress.close()


@main.command("build-engines")
@click.option(
    "--model", "snapshot", required=True, type=click.Path(), help="diffusers SVD snapshot directory."
)
@click.option("--out", required=True, type=click.Path(), help="Engine directory to write.")
@click.option(
    "--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True
)
@click.option(
    "--precision", "precisions", multiple=True, help="COMPONENT=fp32|fp16, e.g. unet=fp16 (repeatable)."
)
@click.option(
    "--unet-precision",
    type=click.Choice(["fp32", "fp16", "int8", "fp8"]),
    default=None,
    help="The UNet's precision (same as --precision unet=...); int8 / fp8 need --calibration. "
    "[default: fp32 for onnxruntime, fp16 for tensorrt]",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    default=None,
    help="int8 / fp8 UNet: calibration directory from `svd-export calibrate`.",
)
@click.option(
    "--variant",
    type=click.Choice(["auto", "fp32", "fp16"]),
    default="auto",
    show_default=True,
    help="Which weight files of the snapshot to read.",
)
@click.option(
    "--num-frames",
    default=None,
    help="TensorRT: frames N or MIN:MAX (opt: the model's). [default: the model's]",
)
@click.option("--height", default=None, help="TensorRT: pixel height N or MIN:MAX (opt: 576). [default: 576]")
@click.option("--width", default=None, help="TensorRT: pixel width N or MIN:MAX (opt: 1024). [default: 1024]")
@click.option(
    "--decode-chunk-size",
    type=int,
    default=None,
    help="TensorRT: largest decode chunk. [default: max frames]",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="TensorRT: tactic timing cache shared across builds. [default: per TensorRT + GPU in ~/.cache/svd-trt]",
)
def build_engines(
    snapshot: str,
    out: str,
    backend: str,
    precisions: tuple[str, ...],
    unet_precision: str | None,
    calibration: str | None,
    variant: str,
    **trt_args,
):
    """Export every component of MODEL and build the engines into OUT."""
    given = [name for name, value in trt_args.items() if value is not None]
    if backend != "tensorrt" and given:
        _fail(f"--{given[0].replace('_', '-')} applies to --backend tensorrt only")
    parsed = _parse_precisions(precisions)
    if unet_precision:
        parsed["unet"] = unet_precision
    if calibration and parsed.get("unet") not in QUANTIZED_PRECISIONS:
        _fail("--calibration applies to --unet-precision int8 or fp8 only")
    start = time.perf_counter()
    variant_arg = {"fp32": None}.get(variant, variant)
    manifest = _build(snapshot, out, backend, parsed, variant_arg, calibration, trt_args)
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
    click.echo(
        f"wrote {len(manifest.components)} {backend} components ({size:.1f} MiB) to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


def _register() -> None:
    """The commands that live beside their libraries."""
    from svd_trt.calibration.cli import calibrate, quantize
    from svd_trt.engines.check_cli import check

    for command in (check, calibrate, quantize):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
