"""The accuracy check's results and their two renderings: report.json (every number) and report.md.

`engines/accuracy.py` computes; this module only holds and writes the results.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svd_trt.engines.activations import ActivationPeak


@dataclass
class OutputResult:
    """One output of one component; errors are None where shapes differ."""

    name: str
    shape: list[int]
    ref_shape: list[int]
    dtype: str
    max_abs: float | None
    mean_abs: float | None
    max_rel: float | None  # Polygraphy's |d| / |ref| per element: large where ref ~ 0
    mean_rel: float | None
    max_abs_over_ref_max: float | None  # max |d| / max |ref|: the error against the output's scale
    ref_max_abs: float | None
    passed: bool


@dataclass
class ComponentResult:
    name: str
    precision: str
    atol: float
    rtol: float
    input_shapes: dict[str, list[int]]
    input_dtypes: dict[str, str]
    outputs: list[OutputResult]
    seconds_engine: float
    seconds_reference: float
    # An fp16 ONNX graph run in ONNX Runtime: its fp16 tensors' peak (engines/activations.py)
    fp16_peak: ActivationPeak | None = None

    @property
    def passed(self) -> bool:
        overflowed = self.fp16_peak is not None and self.fp16_peak.overflowed
        return bool(self.outputs) and all(o.passed for o in self.outputs) and not overflowed


@dataclass
class EndToEndResult:
    num_frames: int
    height: int
    width: int
    steps: int
    decode_chunk_size: int
    image: str
    shape: list[int]
    max_abs: float | None  # None: non-finite frames (NaN/inf from an engine)
    mean_abs: float | None
    psnr_db: float | None  # None: identical (infinite) or non-finite frames; see `identical`
    identical: bool
    min_psnr_db: float
    seconds_engine: float
    seconds_reference: float

    @property
    def passed(self) -> bool:
        return self.identical or (self.psnr_db is not None and self.psnr_db >= self.min_psnr_db)

    def psnr_text(self) -> str:
        if self.identical:
            return "inf dB (identical)"
        return "n/a (non-finite frames)" if self.psnr_db is None else f"{self.psnr_db:.2f} dB"


@dataclass
class Report:
    backend: str
    engine_dir: str
    snapshot: str
    num_frames: int
    height: int
    width: int
    decode_chunk_size: int
    seed: int
    reference: str
    versions: dict[str, str | None]
    components: list[ComponentResult] = field(default_factory=list)
    end_to_end: EndToEndResult | None = None
    quantized: dict[str, Any] | None = None  # calibration.report.quantized_report, plus pass/fail

    @property
    def passed(self) -> bool:
        e2e_ok = self.end_to_end is None or self.end_to_end.passed
        quant_ok = self.quantized is None or self.quantized["passed"]
        return all(c.passed for c in self.components) and e2e_ok and quant_ok

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        for c, dc in zip(self.components, d["components"]):
            dc["passed"] = c.passed
        if self.end_to_end is not None:
            d["end_to_end"]["passed"] = self.end_to_end.passed
        return d


def write_report(report: Report, directory: str | Path) -> tuple[Path, Path]:
    """report.json (every number) and report.md (the same, readable); returns both paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def render_markdown(report: Report) -> str:
    status = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# svd-export check: {status}",
        "",
        f"- engines: `{report.engine_dir}` ({report.backend})",
        f"- reference: {report.reference}, from `{report.snapshot}`",
        f"- sizes: {report.num_frames} frames, {report.height}x{report.width}, "
        + ("" if report.decode_chunk_size is None else f"decode chunk {report.decode_chunk_size}, ")
        + f"seed {report.seed}",
        "- versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report.versions.items()),
        "",
        "## Components",
        "",
        "An element fails where |engine - ref| > atol and > rtol * |ref| (Polygraphy, elementwise).",
        "",
        "| component | output | precision | shape | max abs | mean abs | max rel | mean rel "
        "| max abs / max ref | atol | rtol | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.components:
        for o in c.outputs:
            lines.append(
                f"| {c.name} | {o.name} | {c.precision} | {o.shape} | {_num(o.max_abs)} | {_num(o.mean_abs)} "
                f"| {_num(o.max_rel)} | {_num(o.mean_rel)} | {_num(o.max_abs_over_ref_max)} "
                f"| {c.atol:g} | {c.rtol:g} | {'PASS' if o.passed else 'FAIL'} |"
            )
    peaks = [c for c in report.components if c.fp16_peak is not None]
    if peaks:
        lines += [
            "",
            "## fp16 activations",
            "",
            "Every fp16 tensor of the graph, on the inputs above: the largest magnitude against fp16's "
            "65504 (an inf or NaN is an overflow and fails the component). Random weights lack the "
            "outliers of trained ones.",
            "",
            "| component | largest abs | tensor | headroom | fp16 tensors | non-finite |",
            "|---|---|---|---|---|---|",
        ]
        for c in peaks:
            p = c.fp16_peak
            lines.append(
                f"| {c.name} | {p.max_abs:.4g} | `{p.tensor}` | {p.headroom:.3g}x | {p.fp16_tensors} "
                f"| {p.nonfinite_tensors} |"
            )
    e = report.end_to_end
    if e is not None:
        lines += [
            "",
            "## End to end",
            "",
            f"Pipeline through the engines vs through the torch port, same noise and latents: "
            f"`{Path(e.image).name}`, {e.num_frames} frames, {e.height}x{e.width}, {e.steps} steps.",
            "",
            f"- max abs frame error: {_num(e.max_abs)} (frames in [0, 1]); mean {_num(e.mean_abs)}",
            f"- PSNR: {e.psnr_text()} (bound >= {e.min_psnr_db:g} dB): {'PASS' if e.passed else 'FAIL'}",
        ]
    if report.quantized is not None:
        from svd_trt.calibration.report import markdown as quantized_markdown

        q = report.quantized
        lines += ["", quantized_markdown(q).rstrip("\n"), ""]
        lines.append(
            f"Worst end-to-end PSNR {q['worst_psnr_db']:.2f} dB "
            f"(bound >= {q['min_psnr_db']:g} dB): {'PASS' if q['passed'] else 'FAIL'}"
        )
    return "\n".join(lines) + "\n"
