"""`svd-export check`: each engine against the torch port in fp32, through Polygraphy's comparator.

Per component, one seeded feed at the requested shapes (spec.sample_inputs: realistic
ranges, UNet timesteps over the real sigma range) goes to the engine, cast by Polygraphy to
the engine's input dtypes, and to the port in fp32. Polygraphy's simple comparator checks
every element: one fails where |engine - ref| > atol AND |engine - ref| > rtol * |ref|.
Optionally the whole pipeline runs through the engines and through the port with the same
noise and latents (`end_to_end`). `write_report` puts the numbers in report.json / report.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from svd_trt.config import SVDConfig
from svd_trt.engines.profiles import BATCH, DEFAULT_HEIGHT, DEFAULT_WIDTH
from svd_trt.manifest import FLOAT_UNET, ComponentEntry, Manifest, load_manifest
from svd_trt.manifest import QUANTIZED_PRECISIONS as QUANTIZED
from svd_trt.runtime.runners import Runner, open_runner
from svd_trt.spec import ComponentSpec, component_specs, sizes_for

log = logging.getLogger(__name__)

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "coffee.jpg"


@dataclass(frozen=True)
class Tolerance:
    """Polygraphy's elementwise check: an element fails only if it exceeds both."""

    atol: float
    rtol: float


# THE tolerance table: (component, engine precision) -> Tolerance; the reference is always the
# port in fp32. atol is in the output's own units; the scales of the real model's outputs are
# image_embeds ~O(1), latent (unscaled) std ~5.5 = 1 / 0.18215, noise_pred ~unit std, frames in
# about [-1, 1] (1e-3 there is 1/8 of an 8-bit level after postprocessing).
# - fp32 (ONNX Runtime, TensorRT strict fp32 without TF32): only op order, fusions and conv
#   algorithms differ, ~1e-6 of the output scale on the small model (measured: <= 5e-6 absolute
#   on O(1) outputs), ~1e-5..1e-4 expected through the real model's depth. 1e-3 of the scale
#   leaves that margin and still catches a wrong weight or a wrong norm epsilon (~1e-2).
# - fp16: unit roundoff 2^-11 = 4.9e-4 per rounding, the inputs alone already rounded; through
#   32 CLIP layers or the UNet's ~40 resblocks/attentions the worst element of millions lands
#   at ~1e-2 of the scale. Polygraphy's default 1e-5 would fail every fp16 engine; 2e-2..3e-2
#   (x5.5 for the unscaled latent) pass rounding noise. The price: a subtle corruption below
#   ~3e-2 passes an fp16 check (see tests); check an fp32 build for that.
# Quantized UNets (int8/fp8) have no row: they are scored against the float UNet kept beside
# them (`unet_float`) on held-out calibration data, in the quantized section (QUANT_MIN_PSNR).
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("image_encoder", "fp32"): Tolerance(atol=1e-3, rtol=1e-3),
    ("vae_encoder", "fp32"): Tolerance(atol=5e-3, rtol=1e-3),
    ("unet", "fp32"): Tolerance(atol=1e-3, rtol=1e-3),
    ("vae_decoder", "fp32"): Tolerance(atol=1e-3, rtol=1e-3),
    ("image_encoder", "fp16"): Tolerance(atol=2e-2, rtol=2e-2),
    ("vae_encoder", "fp16"): Tolerance(atol=1e-1, rtol=2e-2),
    ("unet", "fp16"): Tolerance(atol=3e-2, rtol=3e-2),
    ("vae_decoder", "fp16"): Tolerance(atol=2e-2, rtol=2e-2),
}
# End to end, frames in [0, 1], by the lowest precision among the engines. fp32: per-call
# errors ~1e-6 stay ~1e-5 after a few Euler steps (> 90 dB); 50 dB (RMS 0.8 of 255 levels)
# is the bound. fp16: rounding is re-injected every step and guidance amplifies it; 30 dB
# (RMS 8 levels) still means the same video, a broken engine is far below (noise ~10 dB).
E2E_MIN_PSNR = {"fp32": 50.0, "fp16": 30.0}
# Quantized vs float pipeline, same noise, frames in [0, 1]. Measured on the small random model
# (tests/calibration/test_quant_report.py): int8 23.5-26.9 dB over 25 settings; the float
# pipeline with merely another seed scores 17.9 dB. 20 dB therefore separates "follows the
# float trajectory" from "an unrelated video". Random weights lack trained outliers, so this
# is a floor for catching broken quantization, not a quality claim for real weights.
QUANT_MIN_PSNR = 20.0
E2E_MIN_PSNR.update(dict.fromkeys(QUANTIZED, QUANT_MIN_PSNR))


class CheckError(ValueError):
    """A check that cannot run as asked (a usage error): the message is one line."""


@dataclass(frozen=True)
class CheckOptions:
    """What to check; None = the model's own value (frames) or the video's length (chunk)."""

    engine_dir: Path
    snapshot: Path
    backend: str | None = None  # default: the one the directory was built for
    num_frames: int | None = None
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    decode_chunk_size: int | None = None
    seed: int = 0
    device: str = "auto"  # the torch reference: cuda when available, else cpu
    end_to_end: bool = False
    steps: int = 3  # end to end only: few steps keep the fp32 torch run affordable
    image: Path = DEFAULT_IMAGE
    calibration: Path | None = None  # quantized UNet: the data it was calibrated on (held-out part)
    quantized_runs: int = 1  # quantized section: held-out pipeline runs compared end to end


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

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)


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


class PolygraphyRunner(BaseRunner):
    """Any of our Runners as a Polygraphy runner: opened on activate, dropped on deactivate, so
    Comparator.run holds one model at a time (the real UNet is 6 GB in fp32)."""

    def __init__(self, name: str, open_fn: Callable[[], Runner], inputs: dict[str, tuple[Any, list]]):
        super().__init__(name=name)
        self._open = open_fn
        self._inputs = inputs  # name -> (dtype, dims with str for dynamic axes)
        self._runner: Runner | None = None

    def activate_impl(self) -> None:
        self._runner = self._open()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, (dtype, dims) in self._inputs.items():
            meta.add(name, dtype, dims)
        return meta

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._runner.run(dict(feed_dict))
        self.inference_time = time.perf_counter() - start
        return OrderedDict(outputs)

    def deactivate_impl(self) -> None:
        close = getattr(self._runner, "close", None)
        if callable(close):
            close()  # TensorRT: free device buffers now
        self._runner = None


def tolerance(component: str, precision: str) -> Tolerance:
    try:
        return TOLERANCES[(component, precision)]
    except KeyError:
        raise CheckError(
            f"no accuracy tolerance for {component} at {precision} (TOLERANCES in engines/accuracy.py)"
        ) from None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def versions() -> dict[str, str | None]:
    """Library versions for the report; tensorrt None where it is not installed."""
    import onnxruntime
    import polygraphy
    import torch

    from svd_trt import __version__

    found: dict[str, str | None] = {
        "svd-trt": __version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "polygraphy": polygraphy.__version__,
        "tensorrt": None,
    }
    with contextlib.suppress(ImportError, OSError):
        import tensorrt

        found["tensorrt"] = str(tensorrt.__version__)
    return found


def component_sizes(cfg: SVDConfig, opts: CheckOptions, name: str) -> dict[str, int]:
    """Sizes as the pipeline calls `name`: batch per engines.profiles.BATCH, decoder F = one chunk."""
    frames = opts.decode_chunk_size if name == "vae_decoder" else opts.num_frames
    return sizes_for(cfg, BATCH[name].opt, frames, opts.height, opts.width)


def check_component(
    spec: ComponentSpec,
    entry: ComponentEntry,
    opts: CheckOptions,
    manifest: Manifest,
    backend: str,
    name: str | None = None,
) -> ComponentResult:
    """Run the engine and the fp32 port on one seeded feed; compare with Polygraphy.

    `name` is the manifest's name when it differs from the spec's (`unet_float`)."""
    from svd_trt.export.torch_runner import torch_runner

    name = name or spec.name
    tol = tolerance(spec.name, entry.precision)
    feed = spec.sample_inputs(
        component_sizes(manifest.model, opts, spec.name), np.random.default_rng(opts.seed)
    )
    engine_io = {n: (np.dtype(v["dtype"]), v["dims"]) for n, v in entry.inputs.items()}
    ref_io = {t.name: (t.dtype("fp32"), list(t.dims)) for t in spec.inputs}
    engine = PolygraphyRunner(
        f"{backend}:{name}", lambda: open_runner(opts.engine_dir, name, entry, backend), engine_io
    )
    reference = PolygraphyRunner(
        f"torch-fp32:{spec.name}",
        lambda: torch_runner(opts.snapshot, spec.name, manifest.model, opts.device),
        ref_io,
    )
    func = SimpleCompareFunc(atol=tol.atol, rtol=tol.rtol, check_error_stat="elemwise")
    # Polygraphy logs every statistic at INFO; the report carries them, so only -v shows its log.
    with G_LOGGER.verbosity(G_LOGGER.INFO if log.isEnabledFor(logging.INFO) else G_LOGGER.CRITICAL):
        # Engine first, reference second: Polygraphy's relative error divides by the second runner.
        results = Comparator.run([engine, reference], data_loader=[feed])
        accuracy = Comparator.compare_accuracy(results, compare_func=func)
    matches = accuracy[0][(engine.name, reference.name)][0]
    ours, ref = results[engine.name][0], results[reference.name][0]
    return ComponentResult(
        name=name,
        precision=entry.precision,
        atol=tol.atol,
        rtol=tol.rtol,
        input_shapes={k: list(v.shape) for k, v in feed.items()},
        input_dtypes={k: dtype.name for k, (dtype, _) in engine_io.items()},
        outputs=[_output_result(n, ours[n], ref[n], matches.get(n, False)) for n in spec.output_names],
        seconds_engine=float(ours.runtime),
        seconds_reference=float(ref.runtime),
    )


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _output_result(name: str, ours: np.ndarray, ref: np.ndarray, match: Any) -> OutputResult:
    """Polygraphy's statistics; None where it refused to compare (a bare False: shapes differ)."""
    # Not `if match`: a failed OutputCompareResult is falsy but holds the statistics.
    stats = None if isinstance(match, bool) else match

    def stat(field_name: str) -> float | None:
        return None if stats is None else _finite(getattr(stats, field_name))

    ref_max = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
    max_abs = stat("max_absdiff")
    return OutputResult(
        name=name,
        shape=list(ours.shape),
        ref_shape=list(ref.shape),
        dtype=ours.dtype.name,
        max_abs=max_abs,
        mean_abs=stat("mean_absdiff"),
        max_rel=stat("max_reldiff"),
        mean_rel=stat("mean_reldiff"),
        max_abs_over_ref_max=_finite(max_abs / ref_max) if max_abs is not None and ref_max > 0 else None,
        ref_max_abs=_finite(ref_max),
        passed=bool(match),
    )


def run_end_to_end(opts: CheckOptions, manifest: Manifest, backend: str) -> EndToEndResult:
    """The pipeline through the engines vs through the fp32 port: same image, noise and latents."""
    from svd_trt.calibration.report import psnr
    from svd_trt.export.torch_runner import torch_runners
    from svd_trt.runtime.image_preprocess import load_image
    from svd_trt.runtime.pipeline import GenerationOptions, SVDPipeline

    image = load_image(opts.image)
    gen = GenerationOptions(
        num_frames=opts.num_frames,
        height=opts.height,
        width=opts.width,
        num_inference_steps=opts.steps,
        decode_chunk_size=opts.decode_chunk_size,
        seed=opts.seed,
    )
    engines = SVDPipeline.from_engine_dir(opts.engine_dir, backend)
    gen = engines.resolve(gen)
    noise, latents = engines.draw_noise(gen, None, None)  # both pipelines get these arrays
    ours = engines(image, gen, latents=latents, image_noise=noise)
    del engines  # one model set in memory at a time
    reference = SVDPipeline(manifest, torch_runners(opts.snapshot, manifest.model, opts.device))
    ref = reference(image, gen, latents=latents, image_noise=noise)
    diff = np.abs(ours.frames.astype(np.float64) - ref.frames)
    db = psnr(ours.frames, ref.frames)  # frames in [0, 1]: peak 1; inf when identical
    return EndToEndResult(
        num_frames=gen.num_frames,
        height=gen.height,
        width=gen.width,
        steps=gen.num_inference_steps,
        decode_chunk_size=gen.decode_chunk_size,
        image=str(opts.image),
        shape=list(ours.frames.shape),
        max_abs=_finite(float(diff.max())),
        mean_abs=_finite(float(diff.mean())),
        psnr_db=_finite(db),
        identical=bool(db == math.inf),
        min_psnr_db=min(E2E_MIN_PSNR[c.precision] for c in manifest.components.values()),
        seconds_engine=ours.timings.total,
        seconds_reference=ref.timings.total,
    )


def resolve_options(opts: CheckOptions, manifest: Manifest) -> CheckOptions:
    """Fill the model's defaults; reject what cannot run, each with one line."""
    frames = opts.num_frames if opts.num_frames is not None else manifest.model.unet.num_frames
    chunk = frames if opts.decode_chunk_size is None else min(opts.decode_chunk_size, frames)
    opts = dataclasses.replace(
        opts, num_frames=frames, decode_chunk_size=chunk, device=resolve_device(opts.device)
    )
    for name in ("num_frames", "height", "width", "decode_chunk_size", "steps"):
        if getattr(opts, name) <= 0:
            raise CheckError(f"--{name.replace('_', '-')} must be positive, got {getattr(opts, name)}")
    s = manifest.model.vae.scale_factor
    if opts.height % s or opts.width % s:
        raise CheckError(f"height and width must be multiples of {s}, got {opts.height}x{opts.width}")
    quantized = [n for n, e in manifest.components.items() if e.precision in QUANTIZED]
    if quantized and opts.calibration is None:
        raise CheckError(
            f"{quantized[0]} is {manifest.components[quantized[0]].precision}: pass --calibration DIR "
            "(the data it was calibrated on; its held-out runs score it against the float UNet)"
        )
    if quantized and FLOAT_UNET not in manifest.components:
        raise CheckError(f"{opts.engine_dir}: quantized UNet without its float one ({FLOAT_UNET})")
    if opts.end_to_end:
        missing = sorted({c.precision for c in manifest.components.values()} - set(E2E_MIN_PSNR))
        if missing:
            raise CheckError(
                f"no end-to-end PSNR bound for {missing[0]} (E2E_MIN_PSNR in engines/accuracy.py)"
            )
        if not Path(opts.image).is_file():
            raise CheckError(f"{opts.image}: no such image")
    return opts


def check_engines(
    options: CheckOptions, on_component: Callable[[ComponentResult], None] | None = None
) -> Report:
    """Every component of the engine directory against the port; optionally end to end."""
    from svd_trt.export.checkpoint import read_config

    manifest = load_manifest(options.engine_dir)
    if read_config(options.snapshot) != manifest.model:
        raise CheckError(
            f"{options.snapshot}: not the model {options.engine_dir} was built from (configs differ)"
        )
    opts = resolve_options(options, manifest)
    backend = opts.backend or manifest.backend
    specs = component_specs(manifest.model)
    checked = {name: e for name, e in manifest.components.items() if e.precision not in QUANTIZED}
    for name, entry in checked.items():
        tolerance(_spec_name(name), entry.precision)  # every row exists before anything runs
    report = Report(
        backend=backend,
        engine_dir=str(opts.engine_dir),
        snapshot=str(opts.snapshot),
        num_frames=opts.num_frames,
        height=opts.height,
        width=opts.width,
        decode_chunk_size=opts.decode_chunk_size,
        seed=opts.seed,
        reference=f"torch port, fp32, {opts.device}",
        versions=versions(),
    )
    for name, entry in checked.items():
        result = check_component(specs[_spec_name(name)], entry, opts, manifest, backend, name)
        log.info("%s: %s", name, "passed" if result.passed else "FAILED")
        report.components.append(result)
        if on_component:
            on_component(result)
    if len(checked) < len(manifest.components):
        report.quantized = check_quantized(opts, backend)
    if opts.end_to_end:
        report.end_to_end = run_end_to_end(opts, manifest, backend)
    return report


def _spec_name(name: str) -> str:
    return "unet" if name == FLOAT_UNET else name


def check_quantized(opts: CheckOptions, backend: str) -> dict[str, Any]:
    """The quantized UNet against the float one it came from: per step and end to end."""
    from svd_trt.calibration.report import quantized_report

    if backend != "onnxruntime":
        raise CheckError(f"the quantized-vs-float section runs on onnxruntime only, not {backend}")
    section = quantized_report(opts.engine_dir, opts.calibration, e2e_runs=opts.quantized_runs)
    worst = min(r["psnr_db"] for r in section["end_to_end"])
    section.update(worst_psnr_db=worst, min_psnr_db=QUANT_MIN_PSNR, passed=bool(worst >= QUANT_MIN_PSNR))
    return section


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
        f"decode chunk {report.decode_chunk_size}, seed {report.seed}",
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
