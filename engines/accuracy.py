"""`svd-export check`: each engine against the torch port in fp32, through Polygraphy's comparator.

Tolerances and end-to-end bounds are the specs' (svd_trt/spec.py); results and their
rendering are engines/report.py.

Per component, one seeded feed at the requested shapes (spec.sample_inputs: realistic
ranges, UNet timesteps drawn from the snapshot's own schedule at the requested step count,
the family's schedule_timesteps) goes to the engine, cast by Polygraphy to
the engine's input dtypes, and to the port in fp32. Polygraphy's simple comparator checks
every element: one fails where |engine - ref| > atol AND |engine - ref| > rtol * |ref|.
Optionally the whole pipeline runs through the engines and through the port with the same
noise and latents (`end_to_end`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from svd_trt.engines.activations import ActivationPeak, fp16_activation_peak
from svd_trt.engines.report import ComponentResult, EndToEndResult, OutputResult, Report
from svd_trt.errors import UserError, engine_failure
from svd_trt.family import family_named
from svd_trt.manifest import ComponentEntry, Manifest, float_twin, load_manifest, spec_name
from svd_trt.memory import plan_for
from svd_trt.runtime.runners import Runner, open_runner
from svd_trt.spec import E2E_MIN_PSNR, QUANT_MIN_PSNR, ComponentSpec
from svd_trt.spec import QUANTIZED_PRECISIONS as QUANTIZED

log = logging.getLogger(__name__)

class CheckError(UserError, ValueError):
    """A check that cannot run as asked (a usage error): the message is one line."""


@dataclass(frozen=True)
class CheckOptions:
    """What to check: sizes and seed as a generation's (None = the model's own value)."""

    engine_dir: Path
    snapshot: Path
    generation: Any = None  # the family's options; None = its defaults with its check_defaults
    backend: str | None = None  # default: the one the directory was built for
    device: str = "auto"  # the torch reference: cuda when available, else cpu
    end_to_end: bool = False
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # end to end; none = the family's
    calibration: Path | None = None  # a quantized component: the data it was calibrated on (held-out part)
    quantized_runs: int = 1  # quantized section: held-out pipeline runs compared end to end


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
        try:
            outputs = self._runner.run(dict(feed_dict))
        except Exception as e:  # a backend's failure: one line naming the runner (svd_trt/errors.py)
            failure = engine_failure(e, component=self.name)
            if failure is None or failure is e:
                raise
            raise failure from e
        self.inference_time = time.perf_counter() - start
        return OrderedDict(outputs)

    def deactivate_impl(self) -> None:
        close = getattr(self._runner, "close", None)
        if callable(close):
            close()  # TensorRT: free device buffers now
        self._runner = None


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


def component_sizes(manifest: Manifest, gen: Any, spec: ComponentSpec) -> dict[str, int]:
    """Sizes as the pipeline calls the component: its usual batch, the request's sizes."""
    family = family_named(manifest.family)
    return family.sizes(manifest.model, spec, family.request_values(gen), spec.batch.opt)


def component_feed(spec: ComponentSpec, manifest: Manifest, gen: Any) -> dict[str, np.ndarray]:
    """The seeded inputs one component is checked on: sizes as the pipeline calls it, timesteps drawn
    from the snapshot's own schedule at the requested step count (a discrete-timestep scheduler's
    denoiser is fed its 0..999 timesteps, a continuous one its own)."""
    timesteps = family_named(manifest.family).schedule_timesteps(manifest.model, gen)
    sizes = component_sizes(manifest, gen, spec)
    return spec.sample_inputs(sizes, np.random.default_rng(gen.seed), timesteps=timesteps)


def check_component(
    spec: ComponentSpec,
    entry: ComponentEntry,
    opts: CheckOptions,
    manifest: Manifest,
    backend: str,
    name: str | None = None,
) -> ComponentResult:
    """Run the engine and the fp32 port on one seeded feed; compare with Polygraphy.

    `name` is the manifest's name when it differs from the spec's (a quantized one's `<name>_float`)."""
    from svd_trt.export.torch_backend import torch_runner

    name = name or spec.name
    tol = spec.tolerance_at(entry.precision)
    gen = opts.generation
    feed = component_feed(spec, manifest, gen)
    engine_io = {n: (np.dtype(v["dtype"]), v["dims"]) for n, v in entry.inputs.items()}
    ref_io = {t.name: (t.dtype("fp32"), list(t.dims)) for t in spec.inputs}
    where = engine_options(backend, opts.device)
    engine = PolygraphyRunner(
        f"{backend}:{name}", lambda: open_runner(opts.engine_dir, name, entry, backend, **where), engine_io
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
        peak = fp16_peak(opts.engine_dir, entry, backend, feed)
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
        fp16_peak=peak,
    )


def engine_options(backend: str, device: str) -> dict[str, str]:
    """ONNX Runtime runs the graphs on the GPU when the reference is on one and onnxruntime has a
    CUDA execution provider (onnxruntime-gpu); otherwise on the CPU, as before."""
    if backend != "onnxruntime" or not device.startswith("cuda"):
        return {}
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        log.info("onnxruntime has no CUDAExecutionProvider: the ONNX graphs run on the CPU")
        return {}
    return {"device": "cuda"}


def fp16_peak(engine_dir: Path, entry: ComponentEntry, backend: str, feed) -> ActivationPeak | None:
    """The fp16 activation peak of an fp16 ONNX graph run by ONNX Runtime (None for anything else)."""
    if entry.precision != "fp16" or backend != "onnxruntime" or not entry.file.endswith(".onnx"):
        return None
    return fp16_activation_peak(Path(engine_dir) / entry.file, feed)


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
    """The pipeline through the engines vs through the fp32 port: same inputs and random draws."""
    from svd_trt.calibration.report import psnr
    from svd_trt.export.torch_backend import torch_runners
    from svd_trt.runtime.engine_pipeline import open_pipeline
    from svd_trt.runtime.inputs import load_inputs

    family = family_named(manifest.family)
    raw = {**family.check_inputs(), **opts.inputs}
    kinds = {spec.name: spec.kind for spec in family.inputs}  # images are named by their file name
    inputs = load_inputs(family, raw)
    gen = opts.generation
    with open_pipeline(opts.engine_dir, backend) as engines:  # one model set at a time
        draws = engines.draw(gen, inputs)  # both pipelines get these arrays
        ours = engines.generate(inputs, gen, draws)
    # the same assets as the engines' pipeline (a tokenizer.json): only the runners differ
    assets = {name: Path(opts.engine_dir) / name for name in manifest.assets}
    reference = family.pipeline_class()(
        manifest, torch_runners(opts.snapshot, manifest.model, opts.device), assets=assets
    )
    ref = reference.generate(inputs, gen, draws)
    diff = np.abs(ours.frames.astype(np.float64) - ref.frames)
    db = psnr(ours.frames, ref.frames)  # frames in [0, 1]: peak 1; inf when identical
    return EndToEndResult(
        num_frames=gen.num_frames,
        height=gen.height,
        width=gen.width,
        steps=gen.num_inference_steps,
        decode_chunk_size=getattr(gen, "decode_chunk_size", None),
        image=", ".join(f"{k}={Path(v).name}" if kinds.get(k) == "image" else f"{k}={v!r}" for k, v in raw.items()),
        shape=list(ours.frames.shape),
        max_abs=_finite(float(diff.max())),
        mean_abs=_finite(float(diff.mean())),
        psnr_db=_finite(db),
        identical=bool(db == math.inf),
        min_psnr_db=min(E2E_MIN_PSNR[c.precision] for c in manifest.components.values()),
        seconds_engine=ours.timings.total,
        seconds_reference=ref.timings.total,
    )


def check_defaults(manifest: Manifest) -> dict[str, Any]:
    """The family's check defaults, each request size moved into the range the directory serves: a
    TensorRT directory built for one size is checked at that size, an unbounded one at the small default."""
    family = family_named(manifest.family)
    values = dict(family.check_defaults)
    for name, span in manifest.limits.items():
        if name in values and values[name] is not None:
            values[name] = max(span.min, values[name] if span.max is None else min(values[name], span.max))
    return values


def resolve_options(opts: CheckOptions, manifest: Manifest) -> CheckOptions:
    """Fill the model's defaults; reject what cannot run, each with one line."""
    # The engines' run is the one infer would make (the same refusal, before anything runs); the
    # fp16 activation pass keeps every tensor alive and is not in the estimate (docs/memory.md).
    family = family_named(manifest.family)
    memory = plan_for(opts.engine_dir, manifest, opts.backend or manifest.backend)
    generation = opts.generation or family.options(**check_defaults(manifest))
    gen = family.resolve(generation, manifest.model, manifest.limits)
    memory.check(manifest.model, gen)
    opts = dataclasses.replace(opts, generation=gen, device=resolve_device(opts.device))
    quantized = [n for n, e in manifest.components.items() if e.precision in QUANTIZED]
    if quantized and opts.calibration is None:
        raise CheckError(
            f"{quantized[0]} is {manifest.components[quantized[0]].precision}: pass --calibration DIR "
            "(the data it was calibrated on; its held-out runs score it against the float one)"
        )
    if quantized and float_twin(quantized[0]) not in manifest.components:
        raise CheckError(
            f"{opts.engine_dir}: quantized {quantized[0]} without its float one ({float_twin(quantized[0])})"
        )
    if opts.end_to_end:
        missing = sorted({c.precision for c in manifest.components.values()} - set(E2E_MIN_PSNR))
        if missing:
            raise CheckError(
                f"no end-to-end PSNR bound for {missing[0]} (E2E_MIN_PSNR in svd_trt/spec.py)"
            )
        images = {spec.name for spec in family.inputs if spec.kind == "image"}
        for name, value in opts.inputs.items():
            if name in images and not Path(value).is_file():
                raise CheckError(f"{value}: no such image")
    return opts


def check_engines(
    options: CheckOptions, on_component: Callable[[ComponentResult], None] | None = None
) -> Report:
    """Every component of the engine directory against the port; optionally end to end."""
    manifest = load_manifest(options.engine_dir)
    if family_named(manifest.family).read_config(options.snapshot) != manifest.model:
        raise CheckError(
            f"{options.snapshot}: not the model {options.engine_dir} was built from (configs differ)"
        )
    opts = resolve_options(options, manifest)
    backend = opts.backend or manifest.backend
    specs = manifest.specs()
    checked = {name: e for name, e in manifest.components.items() if e.precision not in QUANTIZED}
    for name, entry in checked.items():
        specs[spec_name(name)].tolerance_at(entry.precision)  # every row exists before anything runs
    gen = opts.generation
    report = Report(
        backend=backend,
        engine_dir=str(opts.engine_dir),
        snapshot=str(opts.snapshot),
        num_frames=gen.num_frames,
        height=gen.height,
        width=gen.width,
        decode_chunk_size=getattr(gen, "decode_chunk_size", None),
        seed=gen.seed,
        reference=f"torch port, fp32, {opts.device}",
        versions=versions(),
    )
    for name, entry in checked.items():
        result = check_component(specs[spec_name(name)], entry, opts, manifest, backend, name)
        log.info("%s: %s", name, "passed" if result.passed else "FAILED")
        report.components.append(result)
        if on_component:
            on_component(result)
    if len(checked) < len(manifest.components):
        report.quantized = check_quantized(opts, backend)
    if opts.end_to_end:
        report.end_to_end = run_end_to_end(opts, manifest, backend)
    return report


def check_quantized(opts: CheckOptions, backend: str) -> dict[str, Any]:
    """The quantized UNet against the float one it came from: per step and end to end."""
    from svd_trt.calibration.report import quantized_report

    if backend != "onnxruntime":
        raise CheckError(f"the quantized-vs-float section runs on onnxruntime only, not {backend}")
    section = quantized_report(opts.engine_dir, opts.calibration, e2e_runs=opts.quantized_runs)
    worst = min(r["psnr_db"] for r in section["end_to_end"])
    section.update(worst_psnr_db=worst, min_psnr_db=QUANT_MIN_PSNR, passed=bool(worst >= QUANT_MIN_PSNR))
    return section


