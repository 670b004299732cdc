"""INT8 explicit quantization of the UNet: QDQ nodes calibrated on recorded pipeline inputs.

ONNX Runtime's `quantize_static` writes QuantizeLinear/DequantizeLinear pairs in front of
the Conv, MatMul and Gemm nodes it quantizes. The settings are those TensorRT needs to
consume the same file as an explicitly quantized INT8 network: int8 (not uint8)
activations and weights, symmetric scales (zero point 0) for both, per-channel weights
on the output-channel axis, QDQ format. ONNX Runtime runs that file on the CPU as well.

Sensitive layers stay float, chosen by name patterns matched (fnmatch) against the ONNX
node names, which carry the module paths of the port (`/down_blocks.0/.../attn1/MatMul`):
see EXCLUDE_GROUPS. The engine directory keeps both UNets: `unet` becomes the INT8 file
(precision "int8"), so `SVDPipeline.from_engine_dir` runs it, and `unet_float` keeps the
float one for comparisons and re-quantization.

Quantizing is a step of the engine directory's one writer (svd_trt/output_dir.py), whichever
quantizer runs (this one, or Model Optimizer's in calibration/modelopt_quantize.py): it works in
the stage, the old directory stays whole until the new one is complete, and a quantized UNet
is reused by key (`quantized_key`) like any component.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import onnx
import onnxruntime

from svd_trt.calibration.dataset import INDEX_NAME, load_index, load_sample, select
from svd_trt.errors import UserError
from svd_trt.manifest import (
    ComponentEntry,
    Manifest,
    ManifestError,
    cache_key,
    data_file,
    entry_problems,
    float_twin,
    load_manifest,
    sha256_file,
)
from svd_trt.output_dir import carry, kill_point, writing
from svd_trt.spec import FP8_NEEDS, QUANTIZED_PRECISIONS

log = logging.getLogger(__name__)

# calibration/ quantizes SVD's UNet (svd_trt/families/svd: quantizable); the float one stays beside it.
FLOAT_UNET = float_twin("unet")

OP_TYPES = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "percentile", "entropy")
# ONNX Runtime calibrates float8 only from histograms ("distribution"); it is then the method.
FP8_METHOD = "distribution"

# Name patterns of the nodes kept in float, by why.
EXCLUDE_GROUPS: dict[str, tuple[str, ...]] = {
    # Timestep / conditioning embeddings: tiny Gemms (batch rows only, no speed to gain) whose
    # inputs span orders of magnitude across sigmas (timestep = 0.25 ln sigma, motion bucket
    # up to 255); one int8 scale for all steps would flatten them. Includes the per-resnet
    # projections of that embedding and the temporal position embedding.
    "embeddings": (
        "/time_proj/*",
        "/time_embedding/*",
        "/add_time_proj/*",
        "/add_embedding/*",
        "*/time_emb_proj/*",
        "*/time_pos_embed/*",
    ),
    # First and last layers: conv_in sees the concatenated noisy + image latents, whose
    # scale changes with sigma; conv_out's error lands directly in the v-prediction.
    "conv_io": ("/conv_in/*", "/conv_out/*"),
    # Self-attention's Q K^T and softmax(.) V MatMuls: both operands are activations, and the
    # logits feed exp(); the projections (to_q/to_k/to_v/to_out) are still quantized.
    # Cross-attention (attn2) has no such MatMuls: with SVD's one image token its softmax is 1
    # and the export computes to_out(to_v(context)) (families/svd/port/layers.py: cross_attend).
    "attention_softmax": ("*/attn1/MatMul", "*/attn1/MatMul_1"),
}
DEFAULT_EXCLUDE = tuple(EXCLUDE_GROUPS)
# Bump when the quantization code changes what a quantized UNet holds (this module's and Model
# Optimizer's, calibration/modelopt_quantize.py): quantized UNets of an older version are made
# again. tests/export/test_export_version.py fails when QUANTIZE_SOURCES change without a bump.
# 2: TensorRT's int8 / fp8 UNets keep an fp16 remainder (Q/DQ transplanted onto the fp16 export).
QUANTIZE_VERSION = 2
QUANTIZE_SOURCES = (
    "calibration/quantize.py",
    "calibration/modelopt_quantize.py",
    "calibration/fused_attention.py",
    "calibration/tensor_ranges.py",
    "calibration/qdq_transplant.py",
)


class QuantizeError(UserError):
    """A quantization request that cannot be done here; the message is one line."""


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    """What a quantized UNet depends on besides the float weights and the data; part of its key."""

    precision: str = "int8"
    method: str = "minmax"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE  # group names of EXCLUDE_GROUPS or raw fnmatch patterns
    per_channel: bool = True
    percentile: float = 99.999


def exclusion_patterns(exclude: Iterable[str]) -> list[str]:
    """Group names expand to their patterns; anything else is a pattern itself."""
    out: list[str] = []
    for item in exclude:
        out += EXCLUDE_GROUPS.get(item, (item,))
    return out


def excluded_nodes(model: onnx.ModelProto, exclude: Iterable[str], op_types=OP_TYPES) -> list[str]:
    """Names of the quantizable nodes that match any exclusion pattern."""
    patterns = exclusion_patterns(exclude)
    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and any(fnmatch.fnmatchcase(n.name, p) for p in patterns)
    ]


def _ort():
    # Imported on use: onnxruntime.quantization pulls in onnx and sympy.
    from onnxruntime import quantization

    return quantization


def _reader(calib_dir: Path, split: str):
    """A CalibrationDataReader over one split of a calibration directory, one file at a time."""
    q = _ort()
    entries = select(load_index(calib_dir), split)
    if not entries:
        raise QuantizeError(f"{calib_dir}: no {split} samples to calibrate on")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(entries)

        def __len__(self) -> int:
            return len(entries)

        def get_next(self):
            entry = next(self.it, None)
            return None if entry is None else load_sample(calib_dir, entry)

    return Reader()


def extra_options(opts: QuantOptions) -> dict:
    """quantize_static's extra_options for TensorRT-consumable symmetric int8 / fp8 QDQ."""
    extra = {
        "ActivationSymmetric": True,  # TensorRT's explicit INT8 takes zero point 0 only
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT folds float biases itself; int32 bias QDQ is ORT-only
        "CalibTensorRangeSymmetric": True,
    }
    if opts.method == "percentile":
        extra["CalibPercentile"] = opts.percentile
    return extra


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes become initializers and Identity-of-initializer nodes disappear (in place).

    Same function, a third fewer nodes: ONNX Runtime's quantizer rewrites node inputs by
    scanning every node per inserted QDQ pair, so its run time grows with nodes x pairs.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    alias: dict[str, str] = {}
    keep = []
    for n in graph.node:
        if n.op_type == "Constant" and [a.name for a in n.attribute] == ["value"]:
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            graph.initializer.append(t)
            inits.add(t.name)
        elif n.op_type == "Identity" and n.input[0] in inits:
            alias[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    outputs = {o.name for o in graph.output}
    for n in keep:
        n.input[:] = [alias.get(i, i) if i not in outputs else i for i in n.input]
    keep += [onnx.helper.make_node("Identity", [src], [dst]) for dst, src in alias.items() if dst in outputs]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def quantize_onnx(src: Path, dst: Path, calib_dir: Path, opts: QuantOptions) -> list[str]:
    """Write the QDQ model of `src` to `dst`; returns the names of the nodes left in float."""
    q = _ort()
    model = fold_constants(onnx.load(str(src), load_external_data=False))
    exclude = excluded_nodes(model, opts.exclude)
    external = Path(data_file(str(src))).exists()  # past 2 GB the quantized file needs it too
    # Beside `src`, so references to its external data file stay valid.
    prepared = src.with_name(f".{src.stem}.prepared.onnx")
    onnx.save_model(model, str(prepared))
    kill_point("quantizing")
    method = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}.get(opts.method)
    # FP8 E4M3 per tensor, as TensorRT's FP8 Q/DQ expects; ONNX Runtime raises the opset to 19.
    qtype = q.QuantType.QFLOAT8E4M3FN if opts.precision == "fp8" else q.QuantType.QInt8
    # Its advice to run its pre-processing (shape inference + optimisation) goes to the root
    # logger on every call; the graph is already constant-folded here.
    try:
        with _quiet_root_logger():
            q.quantize_static(
                str(prepared),
                str(dst),
                _reader(calib_dir, "calibration"),
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES),
                per_channel=opts.per_channel and opts.precision == "int8",
                activation_type=qtype,
                weight_type=qtype,
                nodes_to_exclude=exclude,
                use_external_data_format=external,
                calibrate_method=getattr(q.CalibrationMethod, method or "Distribution"),
                extra_options=extra_options(opts),
            )
    finally:
        prepared.unlink(missing_ok=True)
    return exclude


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def check_request(precision: str, method: str = "minmax", target: str = "onnxruntime") -> None:
    """QuantizeError (one line) for a request that cannot be met, before any slow work."""
    if precision == "fp8" and target != "tensorrt":
        # ONNX Runtime has no FP8 kernels on the CPU: the file would only be fake-quantized there.
        raise QuantizeError(f"fp8 needs {FP8_NEEDS}")
    if precision not in QUANTIZED_PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}: choose int8 (or fp8 for {FP8_NEEDS})")
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}: choose one of {', '.join(METHODS)}")


# --- the quantized UNet as a step of the engine directory's writer (svd_trt/output_dir.py)

# (the float UNet's ONNX file in the stage, the quantized file to write beside it) -> the manifest's
# `quantization` record. Writes the file and its external data, if any, and nothing else.
QuantizeFile = Callable[[Path, Path], dict]


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """One way to quantize the UNet: what its result depends on (`tool`, part of the key) and the run."""

    precision: str
    tool: str
    run: QuantizeFile


def quantized_key(float_entry: ComponentEntry, calib_dir: Path, precision: str, tool: str) -> str:
    """What a quantized UNet depends on: the float UNet's files (their manifest records), the
    calibration data (its index, written last by capture and naming every sample), the
    precision, the quantizer and its settings, and QUANTIZE_VERSION (this code)."""
    payload = {
        "float_unet": float_entry.digest(),
        "calibration": sha256_file(calib_dir / INDEX_NAME),
        "precision": precision,
        "tool": tool,
        "quantize_version": QUANTIZE_VERSION,
    }
    return cache_key(payload)


def float_entry_of(manifest: Manifest) -> ComponentEntry:
    """The float UNet: `unet_float` in a directory quantized before, else `unet`."""
    return manifest.components[FLOAT_UNET if FLOAT_UNET in manifest.components else "unet"]


def quantize_step(calib_dir: Path, quantizer: Quantizer, on_component=None):
    """A step for the writer's stage (export/onnx_export.Finish): the stage's float UNet gets its
    quantized twin, reused from the directory being replaced when the key matches, else made.

    The manifest's `unet` becomes the quantized file (`SVDPipeline.from_engine_dir` runs it) and
    `unet_float` keeps the float one, for `svd-export check` and re-quantizing."""

    def finish(stage: Path, out: Path, manifest: Manifest) -> Manifest:
        float_entry = float_entry_of(manifest)
        check_inputs(calib_dir, float_entry)
        key = quantized_key(float_entry, calib_dir, quantizer.precision, quantizer.tool)
        start = time.perf_counter()
        entry = _previous(out, key)
        if entry is not None:
            carry(out, entry.file_names(out), stage)
            status = "reused"
        else:
            dst = stage / f"unet.{quantizer.precision}.onnx"
            log.info("quantizing %s to %s", float_entry.file, dst.name)
            quant = quantizer.run(stage / float_entry.file, dst)
            entry = dataclasses.replace(
                float_entry, file=dst.name, precision=quantizer.precision, key=key,
                extra={"quantization": quant}, files={},
            ).recorded(stage)  # fmt: skip
            status = "quantized"
        kill_point("quantized")
        if on_component:
            on_component(f"unet {quantizer.precision} q/dq", status, time.perf_counter() - start)
        components = {**manifest.components, "unet": entry, FLOAT_UNET: float_entry}
        return dataclasses.replace(manifest, components=components)

    return finish


def _previous(out: Path, key: str) -> ComponentEntry | None:
    """The quantized UNet of the directory being replaced, when its key is `key` and its files are intact."""
    try:
        entry = load_manifest(out, check_sizes=False).components.get("unet")
    except ManifestError:
        return None
    if entry is None or entry.key != key or entry_problems(out, "unet", entry, full=True):
        return None
    return entry


def requantize(
    engine_dir: Path, calib_dir: Path, quantizer: Callable[[Manifest], Quantizer], out: Path | None = None
) -> Path:
    """The writer for `svd-export quantize`: `out` (default `engine_dir` itself) becomes the
    directory's float files plus the quantized UNet, swapped in whole; returns its path.

    `engine_dir` is read under the writer's lock, after it recovered what a killed writer left
    (in place, the directory may be waiting beside its name); `quantizer` gets its manifest."""
    target = out or engine_dir
    in_place = target.resolve() == engine_dir.resolve()
    with writing(target, protect=(calib_dir,) if in_place else (calib_dir, engine_dir)) as stage:
        manifest, float_entry = float_unet(engine_dir, calib_dir)
        floats = {n: e for n, e in manifest.components.items() if not (n == "unet" and float_entry is not e)}
        for entry in floats.values():
            carry(engine_dir, entry.file_names(engine_dir), stage)
        step = quantize_step(calib_dir, quantizer(manifest))
        final = step(stage, target, dataclasses.replace(manifest, components=floats))
        final.save(stage)
    return target / final.components["unet"].file


def ort_quantizer(calib_dir: Path, opts: QuantOptions) -> Quantizer:
    """ONNX Runtime's quantize_static with `opts` (the ONNX Runtime build's and `svd-export quantize`'s)."""
    settings = {**dataclasses.asdict(opts), "patterns": exclusion_patterns(opts.exclude)}
    tool = f"{json.dumps(settings, sort_keys=True)}|ort{onnxruntime.__version__}"

    def run(src: Path, dst: Path) -> dict:
        tmp = dst.with_name(f".{dst.name}.partial")
        excluded = quantize_onnx(src, tmp, calib_dir, opts)
        _install(tmp, dst)
        kind = "fp8 e4m3" if opts.precision == "fp8" else "int8 symmetric"
        return {
            **dataclasses.asdict(opts),
            "op_types": list(OP_TYPES),
            "activations": f"{kind} per-tensor",
            "weights": f"{kind} per-channel" if opts.per_channel else f"{kind} per-tensor",
            "calibration": str(calib_dir.resolve()),
            "excluded_nodes": len(excluded),
            "float_file": src.name,
        }

    return Quantizer(opts.precision, tool, run)


def quant_options(
    precision: str = "int8",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    method: str = "minmax",
    per_channel: bool = True,
    target: str = "onnxruntime",
) -> QuantOptions:
    """The checked options of ONNX Runtime's quantizer (fp8: histogram calibration, per tensor)."""
    check_request(precision, method, target)
    if precision == "fp8":
        method, per_channel = FP8_METHOD, False
    return QuantOptions(precision, method, tuple(exclude), per_channel)


def quantize_unet(
    engine_dir: str | Path,
    calib_dir: str | Path,
    precision: str = "int8",
    out: str | Path | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    method: str = "minmax",
    per_channel: bool = True,
    target: str = "onnxruntime",
) -> Path:
    """Quantize the engine directory's float UNet; returns the path of `unet.<precision>.onnx`.

    In place, or into `out` (a new directory: the float files hard-linked), through the one
    writer: the directory is replaced whole, and a quantized UNet with the same key is reused.
    A directory quantized before is re-quantized from its `unet_float`. `target` is who consumes
    the file: fp8 only for "tensorrt" (the ONNX directory of a TensorRT build).
    """
    opts = quant_options(precision, exclude, method, per_channel, target)
    engine_dir, calib_dir = Path(engine_dir), Path(calib_dir)
    quantizer = ort_quantizer(calib_dir, opts)
    return requantize(engine_dir, calib_dir, lambda manifest: quantizer, Path(out) if out else None)


def float_unet(engine_dir: Path, calib_dir: Path) -> tuple[Manifest, ComponentEntry]:
    """The directory's float UNet to quantize (its `unet_float` when quantized before).

    One-line QuantizeError / CalibrationDataError before any work: not ONNX, no calibration
    index, recorded inputs that are not this UNet's."""
    manifest = load_manifest(engine_dir)
    float_entry = float_entry_of(manifest)
    if not float_entry.file.endswith(".onnx"):
        raise QuantizeError(
            f"{engine_dir}: quantization reads ONNX files; this is a {manifest.backend} engine directory"
        )
    check_inputs(calib_dir, float_entry)
    return manifest, float_entry


def check_inputs(calib_dir: Path, entry: ComponentEntry) -> None:
    """QuantizeError when the recorded inputs (the index's names) are not the UNet's."""
    recorded = load_index(calib_dir).get("inputs", [])
    names = list(entry.inputs)
    if names and set(recorded) != set(names):
        raise QuantizeError(f"{calib_dir}: recorded inputs {recorded} do not match the UNet's {names}")


def _install(tmp: Path, dst: Path) -> None:
    """Move the finished file (and its external data, if any) to its final name."""
    data = Path(data_file(str(tmp)))
    if data.exists():
        # The graph names its data file; rewrite it under the final name.
        model = onnx.load(str(tmp), load_external_data=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, location=data_file(dst.name))
        tmp.unlink()
        data.unlink()
        return
    tmp.replace(dst)
