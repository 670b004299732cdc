"""INT8 / FP8 Q/DQ UNets for TensorRT, placed by NVIDIA Model Optimizer, calibrated at full size.

Model Optimizer's ONNX post-training quantizer (`modelopt.onnx.quantization.quantize`) puts
Q/DQ where TensorRT's fusions expect them (conv + residual add, MatMul, the attention
BMMs where TensorRT has fused int8 / fp8 kernels for them, GEMV and small GEMMs left
alone). To decide and calibrate it runs the graph in ONNX Runtime twice: a shape probe
(one input, every MatMul output kept) and the calibration. On a TensorRT export that
means running standard-op attention, whose scores alone are 85 GB at SVD-XT's real
shape (batch 2 x 25 frames, 576x1024) - the shape the ranges must come from.

So both runs are answered from one run of the same graph with each attention core fused
into ONNX Runtime's MultiHeadAttention (calibration/fused_attention.py: every tensor keeps
its name; only the scores and softmax probabilities are gone): per tensor its max |x|
over the calibration split and its shape (calibration/tensor_ranges.py). Model Optimizer
then runs unchanged except at two seams, `get_extended_model_outputs` (the probe: shapes
come back as zero-stride arrays) and `_create_calibrator_with_extra_options` (the
calibrator: the measured ranges come back, grouped as Model Optimizer groups them); the
dropped tensors need nothing measured: scores are never quantized, and Model Optimizer
fixes the softmax output's range to [0, 1] itself. The result equals Model Optimizer's own
run wherever that run fits in memory (tests/calibration/test_modelopt.py).

Model Optimizer quantizes the fp32 export (the graph it calibrates, with fp32 everywhere
it does not quantize); its Q/DQ are then carried onto the fp16 TensorRT export of the same
UNet (calibration/qdq_transplant.py), so the unquantized remainder is fp16 with exactly the
fp32 islands of the fp16 engine. TensorRT builds strongly typed: the remainder of a file
kept fp32 would run every norm, softmax, GEGLU and residual add as fp32 kernels.

Calibration is `max` (symmetric, max |x|): the only kind whose FP8 scales are right, as
Model Optimizer derives FP8 from the INT8 pipeline (scale x 448/127). The quantization
runs in its own interpreter (`python -m` this module): Model Optimizer patches ONNX
Runtime's quantization classes for the process's lifetime (which would change
calibration/quantize.py's results after it), and its peak memory (about 7.5x the model:
it holds several copies; docs/quantization.md) goes back to the system when it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from svd_trt.calibration.dataset import load_index, load_sample, select
from svd_trt.calibration.fused_attention import attention_cores, fuse_attention
from svd_trt.calibration.qdq_transplant import fp16_fraction, transplant_qdq
from svd_trt.calibration.quantize import QuantizeError, Quantizer, fold_constants, requantize
from svd_trt.calibration.tensor_ranges import TensorStats, float_activations, measure, probe_shapes
from svd_trt.manifest import data_file
from svd_trt.output_dir import kill_point

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp8")
INSTALL = "pip install 'svd-trt[modelopt]'"
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
OPSET = 19  # Model Optimizer's minimum for int8 / fp8 Q/DQ


@dataclasses.dataclass(frozen=True)
class Job:
    """What the spawned process quantizes (passed as JSON)."""

    src: Path  # the float UNet's copy in `work`; Model Optimizer may rewrite it
    dst: Path  # the Q/DQ file, written in `work`
    reference: Path  # the fp16 TensorRT export of the same UNet, staged in `work`: the remainder's types
    calib_dir: Path
    precision: str
    down: int  # the UNet's total downsampling: the smallest latent side it accepts


def check_modelopt_request(precision: str, calib_dir: Path) -> None:
    """QuantizeError (one line) before any export: an unknown precision, no calibration samples."""
    if precision not in PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}: choose int8 or fp8")
    if not select(load_index(calib_dir), "calibration"):
        raise QuantizeError(f"{calib_dir}: no calibration samples")


def modelopt_quantizer(
    calib_dir: Path, precision: str, cfg, snapshot: str | Path, variant: str | None = "auto"
) -> Quantizer:
    """Model Optimizer on the stage's float UNet (a TensorRT ONNX directory: standard attention ops);
    the unquantized remainder takes the types of the fp16 UNet exported from `snapshot` (`variant`'s
    weight files), as the fp16 TensorRT build exports it."""
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    try:
        name = f"nvidia-modelopt {version('nvidia-modelopt')}"
    except PackageNotFoundError:
        raise QuantizeError(f"NVIDIA Model Optimizer is not installed; {INSTALL}") from None

    def run(src: Path, dst: Path) -> dict:
        work = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.stem}-modelopt-"))
        try:
            reference = _fp16_reference(Path(snapshot), variant, work)
            job = _stage(src, work, calib_dir, precision, cfg, reference)
            log.info("quantizing %s to %s with Model Optimizer (max calibration)", src.name, dst.name)
            summary = _in_spawned_process(job)
            log.info(
                "%s: %d activations quantized; Conv/MatMul/Gemm fp16 %d of %d; peak memory %.2f GB; %.0f s",
                dst.name, summary["quantized_activations"], *summary["fp16_gemms"],
                summary["peak_rss_bytes"] / 1e9, summary["seconds"],
            )  # fmt: skip
            _install(job.dst, dst)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return _describe(name, precision, calib_dir, src.name, summary)

    return Quantizer(precision, f"max|{name}|ort{onnxruntime.__version__}|remainder-fp16", run)


def quantize_unet_modelopt(
    engine_dir: str | Path,
    calib_dir: str | Path,
    precision: str = "int8",
    snapshot: str | Path | None = None,
    variant: str | None = "auto",
) -> Path:
    """The ONNX directory's float UNet -> `unet.<precision>.onnx` beside it; returns its path.

    The directory is a TensorRT build's ONNX directory (standard attention ops), replaced whole
    through the one writer (calibration/quantize.requantize): the manifest's `unet` becomes the
    Q/DQ file and `unet_float` keeps the float one, as calibration/quantize.py does, so
    `svd-export check` scores one against the other; a directory quantized before is
    re-quantized from its `unet_float`, or its quantized UNet reused when the key matches. The
    fp16 UNet whose types the quantized file takes is exported from `snapshot` (default: the one
    the directory was exported from) with its weight files `variant`.
    """
    engine_dir, calib_dir = Path(engine_dir), Path(calib_dir)
    check_modelopt_request(precision, calib_dir)
    return requantize(
        engine_dir,
        calib_dir,
        lambda m: modelopt_quantizer(calib_dir, precision, m.model, snapshot or m.source, variant),
    )


def _fp16_reference(snapshot: Path, variant: str | None, work: Path) -> Path:
    """The UNet exported as the fp16 TensorRT build exports it, into `work/fp16/`."""
    try:
        from svd_trt.export.onnx_export import export_component
    except ImportError as e:
        raise QuantizeError(f"exporting the fp16 UNet needs the export extra ({e}): pip install 'svd-trt[export]'") from None
    if not (snapshot / "model_index.json").is_file():
        raise QuantizeError(f"{snapshot}: not the snapshot to export the fp16 UNet from (no model_index.json)")
    (work / "fp16").mkdir()
    start = time.perf_counter()
    path = export_component(snapshot, "unet", "fp16", work / "fp16" / "unet.onnx", "tensorrt", variant)
    log.info("exported the fp16 UNet (the remainder's types) in %.0f s", time.perf_counter() - start)
    return path


def _stage(float_file: Path, work: Path, calib_dir: Path, precision: str, cfg, reference: Path) -> Job:
    """The float UNet and the fp16 reference staged in `work` for the spawned process."""
    src = _staged(float_file, work / "unet.onnx")
    fp16 = _staged(reference, work / "unet.fp16.onnx")
    down = 2 ** (len(cfg.unet.block_out_channels) - 1)
    return Job(src, work / f"unet.{precision}.onnx", fp16, calib_dir, precision, down)


def _staged(path: Path, dst: Path) -> Path:
    """`path` copied to `dst` (a copy, not a link: Model Optimizer rewrites its input).

    Weights go to an external `<dst>.data` (as past 2 GB they must), so the graph edits
    here never touch them: Constant nodes folded (the same graph, a third fewer nodes for
    ONNX Runtime's quantizer, which Model Optimizer drives and which is quadratic in the
    node count) and the opset raised to Model Optimizer's 19, which it would otherwise do
    with the weights loaded (its peak: 8x the model, measured)."""
    data = Path(data_file(str(path)))
    if data.exists():  # past 2 GB: copied, never loaded
        model = onnx.load(str(path), load_external_data=False)
        _relocate(model, data_file(dst.name))
        shutil.copyfile(data, data_file(str(dst)))
    else:
        model = onnx.load(str(path))
        onnx.save_model(
            model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
            location=data_file(dst.name), size_threshold=1024,
        )  # fmt: skip
        model = onnx.load(str(dst), load_external_data=False)
    model = onnx.version_converter.convert_version(fold_constants(model), OPSET)
    onnx.save_model(model, str(dst))
    return dst


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG), so a
    killed build leaves no quantizer writing into a stage the next build removes."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the stage is still never swapped in


def _in_spawned_process(job: Job) -> dict:
    """`quantize_copy(job)` in a fresh interpreter (`python -m` this module); its summary back."""
    job_file = job.dst.with_name("job.json")
    job_file.write_text(json.dumps({k: str(v) for k, v in dataclasses.asdict(job).items()}))
    proc = subprocess.Popen([sys.executable, "-m", __name__, str(job_file)], preexec_fn=_die_with_parent)
    kill_point("quantizing")
    returncode = proc.wait()
    result_file = job.dst.with_name("result.json")
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if "error" in result:
        raise QuantizeError(result["error"])
    if returncode or "summary" not in result:
        raise RuntimeError(f"the Model Optimizer process failed (exit {returncode}); see its messages above")
    return result["summary"]


def main(argv: list[str] | None = None) -> int:
    """`python -m svd_trt.calibration.modelopt_quantize JOB.json`: runs `quantize_copy`, writes result.json."""
    job_file = Path((argv or sys.argv[1:])[0])
    raw = json.loads(job_file.read_text())
    job = Job(
        Path(raw["src"]), Path(raw["dst"]), Path(raw["reference"]), Path(raw["calib_dir"]), raw["precision"],
        int(raw["down"]),
    )  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result_file = job.dst.with_name("result.json")
    try:
        result_file.write_text(json.dumps({"summary": quantize_copy(job)}))
    except QuantizeError as e:
        result_file.write_text(json.dumps({"error": str(e)}))
        return 2
    return 0


def quantize_copy(job: Job) -> dict:
    """In the spawned process: measure on the fused graph, then Model Optimizer on `job.src`."""
    start = time.perf_counter()
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise QuantizeError(f"NVIDIA Model Optimizer is not usable here ({e}); {INSTALL}") from None
    stats = full_size_stats(job)
    log.info(
        "measured %d tensors on %d samples in %.0f s",
        len(stats.amax),
        stats.samples,
        time.perf_counter() - start,
    )
    ranges = _Ranges(stats)
    placed = job.dst.with_name(f"unet.{job.precision}.fp32.onnx")  # Model Optimizer's own output
    with _answered_from(ranges):
        quantize(
            str(job.src),
            quantize_mode=job.precision,
            calibration_data_reader=_NoData(),
            calibration_method="max",
            calibration_eps=["cpu"],
            # The graph it calibrates stays fp32; the fp16 remainder comes from the fp16 export below.
            high_precision_dtype="fp32",
            dq_only=True,  # weights stored quantized (int8 / fp8) with only a DequantizeLinear
            use_external_data_format=True,
            output_path=str(placed),
            log_level="WARNING",
        )
    if not placed.exists():
        raise QuantizeError(f"{job.src.name}: Model Optimizer wrote no quantized model")
    quantized, float_nodes = _check_activations(placed, ranges)
    carried = _onto_fp16(placed, job.reference, job.dst)
    return {
        "quantized_activations": quantized,
        "float_nodes": float_nodes,
        **carried,
        "calibration_samples": stats.samples,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": time.perf_counter() - start,
    }


def full_size_stats(job: Job) -> TensorStats:
    """max |x| and shape of every float tensor of the standard graph, from its fused twin."""
    model = onnx.load(str(job.src), load_external_data=False)
    cores = attention_cores(model.graph)
    floats = float_activations(model)
    entries = select(load_index(job.calib_dir), "calibration")
    first = load_sample(job.calib_dir, entries[0])
    # Head counts for the fused nodes, from one run at the smallest latent size (cheap).
    shapes = probe_shapes(
        model, [c.q for c in cores], _smallest(first, job.down), job.src.with_name("probe.onnx")
    )
    if any(len(s) != 4 for s in shapes.values()):
        raise QuantizeError(f"{job.src.name}: attention q is not [N, heads, L, d]")
    fuse_attention(model, cores, {c.bmm1: shapes[c.q][1] for c in cores})
    dropped = {t for c in cores for t in c.dropped}
    samples = (load_sample(job.calib_dir, e) for e in entries)
    stats = measure(model, [n for n in floats if n not in dropped], samples, job.src.with_name("stats.onnx"))
    del model
    gc.collect()
    for c in cores:
        q, k_t = stats.shapes[c.q], stats.shapes[c.k_t]
        stats.shapes[c.scores] = stats.shapes[c.probs] = (*q[:-1], k_t[-1])
        stats.amax[c.probs] = 1.0  # a probability; Model Optimizer fixes this range to [0, 1] anyway
    return stats


def _smallest(sample: dict[str, np.ndarray], side: int) -> dict[str, np.ndarray]:
    """The sample cropped to side x side latents: [B, F, C, h, w] -> [B, F, C, side, side]."""
    return {**sample, "sample": np.ascontiguousarray(sample["sample"][..., :side, :side])}


class _NoData:
    """Model Optimizer's data reader; never read: both of its runs are answered by `_Ranges`."""

    def get_next(self):
        return None

    def get_first(self):
        raise QuantizeError("Model Optimizer asked for data outside the two answered seams")


class _Ranges:
    """Answers Model Optimizer's shape probe and calibration from the full-size statistics."""

    def __init__(self, stats: TensorStats) -> None:
        self.stats = stats
        self.served: set[str] = set()

    def probe(self, onnx_path, extended_model, *args, **kwargs) -> dict[str, np.ndarray]:
        """get_extended_model_outputs: each requested tensor as a zero-stride array of its shape."""
        out = {}
        for o in extended_model.graph.output:
            if o.name not in self.stats.shapes:
                raise QuantizeError(f"no measured shape for {o.name!r}")
            out[o.name] = np.broadcast_to(np.float32(0), self.stats.shapes[o.name])
        return out

    def calibrator(self, model, nodes_to_quantize=None, *args, extra_options=None, **kwargs):
        """_create_calibrator_with_extra_options: a calibrator that has already seen the data."""
        return _Calibrated(
            self, nodes_to_quantize or [], (extra_options or {}).get("group_qdq_tensors"), model
        )


class _Calibrated:
    """What Model Optimizer's patched MinMax calibrator returns, symmetric: (-max|x|, max|x|)."""

    def __init__(self, ranges: _Ranges, nodes: list[str], groups: dict | None, model) -> None:
        self.ranges, self.nodes, self.groups = ranges, set(nodes), groups or {}
        graph = onnx.load(str(model), load_external_data=False).graph
        # As its calibrator selects: inputs and outputs of the nodes to quantize.
        self.tensors = {t for n in graph.node if n.name in self.nodes for t in (*n.input, *n.output)}

    def collect_data(self, data_reader) -> None:
        """Nothing to run: the ranges were measured on the fused graph."""

    def compute_data(self):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        amax = {t: a for t, a in self.ranges.stats.amax.items() if t in self.tensors}
        for cur, group in self.groups.items():  # tensors meeting at a Concat share one scale
            amax[cur] = max(self.ranges.stats.amax[t] for t in {cur, *group})
        self.ranges.served |= set(amax)
        pairs = {t: (np.float32(-a), np.float32(a)) for t, a in amax.items()}
        return TensorsData(
            CalibrationMethod.MinMax, {t: TensorData(lowest=lo, highest=hi) for t, (lo, hi) in pairs.items()}
        )


@contextlib.contextmanager
def _answered_from(ranges: _Ranges) -> Iterator[None]:
    """Model Optimizer's two ONNX Runtime runs of the standard graph, answered by `ranges`."""
    from modelopt.onnx.quantization import graph_utils, ort_patching

    seams = {
        (graph_utils, "get_extended_model_outputs"): ranges.probe,
        # patch_ort_modules installs this as ONNX Runtime's create_calibrator during quantize().
        (ort_patching, "_create_calibrator_with_extra_options"): ranges.calibrator,
    }
    saved = {}
    for (module, name), fn in seams.items():
        if not hasattr(module, name):
            raise QuantizeError(f"this Model Optimizer has no {module.__name__}.{name}; tested with 0.47")
        saved[(module, name)] = getattr(module, name)
        setattr(module, name, fn)
    try:
        yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)


def _onto_fp16(placed: Path, reference: Path, dst: Path) -> dict:
    """Model Optimizer's Q/DQ (in `placed`) carried onto the fp16 export; written to `dst` (+ `_data`)."""
    start = time.perf_counter()
    model = onnx.load(str(reference))
    try:
        done = transplant_qdq(onnx.load(str(placed)), model)
    except ValueError as e:  # TransplantError: the two files are not traces of one UNet
        raise QuantizeError(f"cannot carry the Q/DQ onto the fp16 UNet: {e}") from None
    fp16, total = fp16_fraction(model)
    onnx.save_model(
        model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
        location=dst.name + "_data", size_threshold=1024,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    log.info("carried %d weight and %d activation Q/DQ onto the fp16 UNet in %.1f s", done.weights, done.activations, seconds)
    return {"fp16_gemms": [fp16, total], "subnormal_scales": done.subnormal_scales, "transplant_s": seconds}


def _check_activations(path: Path, ranges: _Ranges) -> tuple[int, int]:
    """Every activation QuantizeLinear got its range from the measured ones.

    Returns (quantized activations, Conv / MatMul / Gemm nodes left float)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    # ONNX Runtime names each scale after the tensor it was calibrated on, `<tensor>_scale`
    # (the Q may sit on another name after Model Optimizer removes a no-op Cast).
    scales = {n.input[1] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights}
    missing = sorted(scales - {t + "_scale" for t in ranges.served})
    if missing:
        raise QuantizeError(f"{path.name}: {missing[0]} is not from a measured range")
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    float_nodes = [n for n in graph.node if n.op_type in QUANTIZED_OPS and not dequantized & set(n.input)]
    return len(scales), len(float_nodes)


def _relocate(model: onnx.ModelProto, location: str) -> None:
    """Point every external tensor of `model` at `location` (one data file)."""
    for t in model.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = location


def _install(tmp: Path, dst: Path) -> None:
    """Move the finished file (and Model Optimizer's `<name>_data`, renamed to our data file) in place."""
    data = Path(str(tmp) + "_data")  # Model Optimizer's own name for its external data
    if data.exists():
        model = onnx.load(str(tmp), load_external_data=False)
        _relocate(model, data_file(dst.name))
        data.replace(data_file(str(dst)))
        onnx.save_model(model, str(tmp))
    tmp.replace(dst)


def _describe(tool: str, precision: str, calib_dir: Path, float_file: str, summary: dict) -> dict:
    """The manifest's quantization record."""
    kind = "fp8 e4m3" if precision == "fp8" else "int8 symmetric"
    return {
        "tool": tool,
        "precision": precision,
        "method": "max",
        "exclude": [],  # Model Optimizer's own placement; nothing excluded by name
        "placement": "Model Optimizer (TensorRT fusion patterns)",
        "activations": f"{kind} per-tensor",
        "weights": f"{kind} per-channel",
        "calibration": str(calib_dir.resolve()),
        "calibration_samples": summary["calibration_samples"],
        "quantized_activations": summary["quantized_activations"],
        "excluded_nodes": summary["float_nodes"],  # Conv / MatMul / Gemm left without Q/DQ
        # The unquantized remainder: the fp16 TensorRT export's types, its fp32 islands included.
        "remainder": "fp16",
        "fp16_gemm_outputs": summary["fp16_gemms"],  # [Conv / MatMul / Gemm with fp16 output, all]
        "subnormal_fp16_scales": summary["subnormal_scales"],
        "float_file": float_file,
    }


if __name__ == "__main__":
    sys.exit(main())
