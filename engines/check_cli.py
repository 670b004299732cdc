"""`svd-export check`: compare an engine directory with the torch port; registered on `svd-export`.

Parses, builds one CheckOptions, calls `check_engines`, writes the report. Exit codes: 0 all
passed, 1 an accuracy check failed, 2 a usage error (one line on stderr). Heavy imports
(torch, Polygraphy) happen inside the command so `svd-export --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from svd_trt.cli import (
    EXIT_FAILED,
    generation_options,
    input_options,
    one_line_errors,
    pop_generation,
    pop_inputs,
)
from svd_trt.spec import ENGINE_BACKENDS


@click.command("check")
@click.option("--engines", "engine_dir", required=True, type=click.Path(), help="Engine directory to check.")
@click.option(
    "--model", "snapshot", required=True, type=click.Path(), help="The diffusers snapshot it was built from."
)
@click.option(
    "--backend",
    type=click.Choice(ENGINE_BACKENDS),
    default=None,
    help="Runtime for the engines. [default: the directory's]",
)
@generation_options()
@input_options
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="torch device of the fp32 reference (cpu, cuda). With cuda, ONNX graphs run on ONNX Runtime's "
    "CUDA execution provider where onnxruntime has one (onnxruntime-gpu), else on the CPU.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where report.json and report.md go. [default: ENGINES/accuracy]",
)
@click.option(
    "--end-to-end", is_flag=True, help="Also run the whole pipeline through both and compare frames."
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    default=None,
    help="A quantized component: the calibration directory it was built from (its held-out runs are scored).",
)
@click.option(
    "--quantized-runs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="A quantized component: held-out runs compared end to end with the float one.",
)
@one_line_errors
def check(
    engine_dir: str,
    snapshot: str,
    report_dir: str | None,
    calibration: str | None,
    **fields,
) -> None:
    """Compare every engine of ENGINES with the torch port of MODEL in fp32 (Polygraphy).

    Generation options default to the family's check defaults (seed 0, 3 steps; a small video where a
    render's default size is too costly), sizes moved into the range the directory serves; --end-to-end's
    inputs default to the family's (a shipped photograph, a fixed prompt)."""
    from svd_trt.engines.accuracy import CheckOptions, check_defaults, check_engines
    from svd_trt.engines.report import write_report
    from svd_trt.family import family_named
    from svd_trt.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    family = family_named(manifest.family)
    options = CheckOptions(
        engine_dir=Path(engine_dir),
        snapshot=Path(snapshot),
        generation=pop_generation(fields, family, check_defaults(manifest)),
        inputs=pop_inputs(fields, family, required=False),
        calibration=Path(calibration) if calibration else None,
        **fields,
    )
    report = check_engines(options, on_component=_echo_component)
    json_path, md_path = write_report(report, report_dir or Path(engine_dir) / "accuracy")
    failed = [c.name for c in report.components if not c.passed]
    if report.end_to_end is not None:
        e = report.end_to_end
        max_abs = "n/a" if e.max_abs is None else f"{e.max_abs:.3g}"
        click.echo(f"end to end: {'PASS' if e.passed else 'FAIL'} (PSNR {e.psnr_text()}, max abs {max_abs})")
        if not e.passed:
            failed.append("end-to-end")
    if report.quantized is not None:
        q = report.quantized
        quantized = f"quantized {q.get('component', 'component')}"
        click.echo(
            f"{quantized} ({q['precision']}) vs float: {'PASS' if q['passed'] else 'FAIL'} "
            f"(worst PSNR {q['worst_psnr_db']:.2f} dB, bound {q['min_psnr_db']:g} dB)"
        )
        if not q["passed"]:
            failed.append(quantized)
    if failed:
        click.echo(f"accuracy FAILED ({', '.join(failed)}); report: {md_path}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"accuracy passed; report: {md_path} ({json_path.name} beside it)")


def _echo_component(result) -> None:
    """One line per component as it finishes."""
    errors = [o.max_abs for o in result.outputs if o.max_abs is not None]
    comparable = errors and len(errors) == len(result.outputs)
    detail = f"max abs {max(errors):.3g}, atol {result.atol:g}" if comparable else "outputs not comparable"
    peak = result.fp16_peak
    if peak is not None:
        overflow = f", {peak.nonfinite_tensors} fp16 tensors overflowed" if peak.overflowed else ""
        detail += f"; fp16 peak {peak.max_abs:.3g} of {peak.limit:g}{overflow}"
    click.echo(f"{result.name} ({result.precision}): {'PASS' if result.passed else 'FAIL'} ({detail})")
