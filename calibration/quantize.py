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
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import onnx
import onnxruntime

from svd_trt.calibration.dataset import INDEX_NAME, UNET_INPUTS, load_index, load_sample, select
from svd_trt.errors import UserError
from svd_trt.manifest import (
    FLOAT_UNET,
    MANIFEST_NAME,
    ComponentEntry,
    Manifest,
    load_manifest,
)
from svd_trt.output_dir import check_target, link_or_copy
from svd_trt.spec import QUANTIZED_PRECISIONS

log = logging.getLogger(__name__)

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
    external = Path(str(src) + ".data").exists()  # past 2 GB the quantized file needs it too
    # Beside `src`, so references to its external data file stay valid.
    prepared = src.with_name(f".{src.stem}.prepared.onnx")
    onnx.save_model(model, str(prepared))
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
        raise QuantizeError("fp8 needs TensorRT on a Hopper GPU")
    if precision not in QUANTIZED_PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}: choose int8 (or fp8 with TensorRT on Hopper)")
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}: choose one of {', '.join(METHODS)}")


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

    In place, or into `out` (a copy of the directory, files hard-linked). The manifest's
    `unet` entry becomes the quantized file and `unet_float` the float one; a directory
    quantized before is re-quantized from its `unet_float`. `target` is who consumes the
    file: fp8 only for "tensorrt" (the ONNX directory of a TensorRT build).
    """
    check_request(precision, method, target)
    if precision == "fp8":
        method, per_channel = FP8_METHOD, False
    opts = QuantOptions(precision, method, tuple(exclude), per_channel)
    src_dir, calib_dir = Path(engine_dir), Path(calib_dir)
    manifest, float_entry = float_unet(src_dir, calib_dir)
    target = Path(out) if out else src_dir
    if target != src_dir:
        _copy_dir(src_dir, manifest, target)
    dst = target / f"unet.{precision}.onnx"
    tmp = dst.with_name(f".{dst.name}.partial")
    log.info("quantizing %s to %s (%s calibration)", float_entry.file, dst.name, method)
    excluded = quantize_onnx(target / float_entry.file, tmp, calib_dir, opts)
    _install(tmp, dst)
    kind = "fp8 e4m3" if opts.precision == "fp8" else "int8 symmetric"
    quant = {
        **dataclasses.asdict(opts),
        "op_types": list(OP_TYPES),
        "activations": f"{kind} per-tensor",
        "weights": f"{kind} per-channel" if opts.per_channel else f"{kind} per-tensor",
        "calibration": str(calib_dir.resolve()),
        "excluded_nodes": len(excluded),
        "float_file": float_entry.file,
    }
    tool = f"{json.dumps(dataclasses.asdict(opts))}|ort{onnxruntime.__version__}"
    record_quantized(target, manifest, float_entry, dst.name, calib_dir, precision, tool, quant)
    return dst


def float_unet(engine_dir: Path, calib_dir: Path) -> tuple[Manifest, ComponentEntry]:
    """The directory's float UNet to quantize (its `unet_float` when quantized before).

    One-line QuantizeError / CalibrationDataError before any work: not ONNX, no calibration
    index, recorded inputs that are not this UNet's."""
    manifest = load_manifest(engine_dir)
    float_entry = manifest.components.get(FLOAT_UNET, manifest.components["unet"])
    if not float_entry.file.endswith(".onnx"):
        raise QuantizeError(
            f"{engine_dir}: quantization reads ONNX files; this is a {manifest.backend} engine directory"
        )
    load_index(calib_dir)
    check_inputs(calib_dir, float_entry)
    return manifest, float_entry


def record_quantized(
    directory: Path,
    manifest: Manifest,
    float_entry: ComponentEntry,
    file: str,
    calib_dir: Path,
    precision: str,
    tool: str,
    quant: dict,
) -> ComponentEntry:
    """The manifest's `unet` becomes `file` (key: the float UNet, the calibration data, the tool
    and its settings), `unet_float` keeps the float one; both with their files recorded."""
    data_hash = hashlib.sha256((calib_dir / INDEX_NAME).read_bytes()).hexdigest()
    key = hashlib.sha256(f"{float_entry.key}|{data_hash}|{precision}|{tool}".encode()).hexdigest()[:32]
    entry = dataclasses.replace(
        float_entry, file=file, precision=precision, key=key, extra={"quantization": quant}, files={}
    ).recorded(directory)
    components = {**manifest.components, "unet": entry, FLOAT_UNET: float_entry}
    dataclasses.replace(manifest, components=components).save(directory)
    return entry


def check_inputs(calib_dir: Path, entry: ComponentEntry) -> None:
    """QuantizeError when the recorded inputs are not the UNet's."""
    names = tuple(entry.inputs)
    if names and set(names) != set(UNET_INPUTS):
        raise QuantizeError(
            f"{calib_dir}: recorded inputs {list(UNET_INPUTS)} do not match the UNet's {list(names)}"
        )


def _install(tmp: Path, dst: Path) -> None:
    """Move the finished file (and its external data, if any) to its final name."""
    data = Path(str(tmp) + ".data")
    if data.exists():
        # The graph names its data file; rewrite it under the final name.
        model = onnx.load(str(tmp), load_external_data=True)
        onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
        tmp.unlink()
        data.unlink()
        return
    tmp.replace(dst)


def _copy_dir(src: Path, manifest: Manifest, dst: Path) -> None:
    """Hard-link (or copy) every file the manifest names, so `dst` is a complete directory.

    `dst` must be new, empty or an engine directory of ours (svd_trt/output_dir.py): never a
    folder whose files a same-named link would replace."""
    check_target(dst, protect=[src])
    dst.mkdir(parents=True, exist_ok=True)
    files = {MANIFEST_NAME} | {n for e in manifest.components.values() for n in e.file_names(src)}
    for name in sorted(files):
        (dst / name).unlink(missing_ok=True)
        link_or_copy(src / name, dst / name)
