"""Export the port's four components to ONNX with dynamic axes, into a self-contained directory.

Graph choices (why): the legacy TorchScript exporter at opset 17, because it takes
`dynamic_axes` directly and writes nn.GroupNorm as Reshape -> InstanceNormalization
(the form every TensorRT parser handles; the native GroupNormalization op of opsets
18/21 has had parser bugs); constant folding on; frames flow through reshapes of the
input shape, so the graph has no Loop or Sequence op. Files past 2 GB keep their
weights in one `<name>.onnx.data` beside the graph, and the checker runs on the path.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from svd_trt.config import SVDConfig
from svd_trt.export.checkpoint import COMPONENTS, component_module, find_weights, load_component, read_config
from svd_trt.export.layers import onnx_attention
from svd_trt.manifest import (
    FLOAT_UNET,
    ComponentEntry,
    Manifest,
    ManifestError,
    entry_problems,
    load_manifest,
)
from svd_trt.output_dir import link_or_copy, writing
from svd_trt.runtime.euler import check_scheduler
from svd_trt.spec import ComponentSpec, Span, component_specs

log = logging.getLogger(__name__)

OPSET = 17
ONNX_PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExportOptions:
    """What an export produces; every field is part of the cache key."""

    precisions: dict[str, str] = field(default_factory=dict)
    opset: int = OPSET
    variant: str = "auto"
    attention: str = "standard"  # export/layers.py onnx_attention: "contrib" for ONNX Runtime

    def precision(self, component: str) -> str:
        return self.precisions.get(component, "fp32")


def attention_kind(backend: str) -> str:
    """ONNX Runtime gets its fused MultiHeadAttention; TensorRT fuses the standard ops itself."""
    return "contrib" if backend == "onnxruntime" else "standard"


def default_precisions(backend: str, specs: dict[str, ComponentSpec]) -> dict[str, str]:
    """Each spec's precision on the backend's target."""
    return {name: spec.precision_on(backend) for name, spec in specs.items()}


def trace_sizes(cfg: SVDConfig) -> dict[str, int]:
    """The shape the exporter traces at: B, F > 1 and h != w so no axis is taken for a constant."""
    down = 2 ** (len(cfg.unet.block_out_channels) - 1)
    h, w = 2 * down, 3 * down
    s = cfg.vae.scale_factor
    return {"B": 2, "F": 3, "h": h, "w": w, "H": h * s, "W": w * s}


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def component_key(weights_hash: str, name: str, precision: str, opts: ExportOptions) -> str:
    text = (
        f"{weights_hash}|{name}|{precision}|opset{opts.opset}|attention-{opts.attention}"
        f"|torch{torch.__version__}|onnx{onnx.__version__}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def export_onnx(
    module: nn.Module,
    spec: ComponentSpec,
    path: Path,
    precision: str,
    sizes: dict[str, int],
    opset: int = OPSET,
) -> Path:
    """Trace `module` at `sizes` and write `path` (+ `path.data` past 2 GB); returns path."""
    rng = np.random.default_rng(0)
    inputs = {k: torch.from_numpy(v) for k, v in spec.sample_inputs(sizes, rng, precision).items()}
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{spec.name}-"))
    try:
        raw = work / path.name
        # The legacy exporter warns about every un-foldable Slice and traced shape check; the
        # graph is verified by running it at other shapes (tests), so keep the console clean.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                tuple(inputs.values()),
                str(raw),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        _save_single(raw, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    onnx.checker.check_model(str(path))
    return path


def _save_single(raw: Path, path: Path) -> None:
    """Move the exported graph to `path`; gather scattered external tensors into one file."""
    extras = [p for p in raw.parent.iterdir() if p != raw]
    if not extras:
        raw.replace(path)
        return
    model = onnx.load(str(raw), load_external_data=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def _reusable(out: Path) -> dict[str, ComponentEntry]:
    try:
        components = dict(load_manifest(out, check_sizes=False).components)
    except ManifestError:
        return {}
    # A quantized directory keeps its float UNet beside the quantized one.
    if FLOAT_UNET in components:
        components["unet"] = components.pop(FLOAT_UNET)
    return components


def build_onnx_dir(
    snapshot: str | Path,
    out: str | Path,
    target: str = "onnxruntime",
    precisions: dict[str, str] | None = None,
    variant: str = "auto",
    on_component: Callable[[str, str, float], None] | None = None,
    limits: dict[str, Span] | None = None,
    force: bool = False,
) -> Manifest:
    """Export every component for `target` into `out` (atomically) and write its manifest.

    `target` decides the graphs: each spec's precision on it and the attention form (ONNX
    Runtime's fused contrib node, or standard ops for TensorRT). Either directory runs in ONNX
    Runtime: for TensorRT it holds the exact files `build-engines --backend tensorrt` builds from.

    Components whose key (weights hash, precision, opset, exporter versions) matches the
    existing directory's are reused. The new directory is assembled beside `out` and
    swapped in only when complete. `limits`: the request sizes the directory serves
    (engines/profiles.served_limits); none = any size.
    """
    snapshot, out = Path(snapshot), Path(out)
    cfg = read_config(snapshot)
    check_scheduler(cfg.scheduler)  # a snapshot the runtime cannot sample is refused before any export
    specs = component_specs(cfg)
    opts = ExportOptions(
        {**default_precisions(target, specs), **(precisions or {})},
        variant=variant,
        attention=attention_kind(target),
    )
    with writing(out, protect=[snapshot], force=force) as stage:
        old = _reusable(out)
        entries = _export_all(snapshot, cfg, specs, opts, out, old, stage, on_component)
        manifest = Manifest(
            "onnxruntime", cfg, entries, source=str(snapshot.resolve()), limits=limits or {}, target=target
        )
        manifest.save(stage)
    return manifest


def _export_all(snapshot, cfg, specs, opts, out, old, stage, on_component) -> dict[str, ComponentEntry]:
    hashes = {
        folder: hash_files(find_weights(snapshot / folder, comp.weights_stem, opts.variant))
        for folder, comp in COMPONENTS.items()
    }
    entries = {}
    loaded: dict[tuple[str, str], nn.Module] = {}
    last_user = {spec.source: n for n, spec in specs.items()}  # free each checkpoint after its last use
    for name, spec in specs.items():
        precision = opts.precision(name)
        key = component_key(hashes[spec.source], name, precision, opts)
        start = time.perf_counter()
        if name in old and old[name].key == key and not entry_problems(out, name, old[name], full=True):
            for f in old[name].file_names(out):
                link_or_copy(out / f, stage / f)
            entries[name] = old[name]
            status = "reused"
        else:
            module = _module_for(snapshot, cfg, spec, precision, opts.variant, loaded)
            with onnx_attention(opts.attention):
                export_onnx(module, spec, stage / spec.onnx_file, precision, trace_sizes(cfg), opts.opset)
            entries[name] = ComponentEntry.describe(spec, spec.onnx_file, precision, key).recorded(stage)
            status = "exported"
        if last_user[spec.source] == name:
            loaded.pop((spec.source, precision), None)  # the real UNet is 6 GB in fp32
        seconds = time.perf_counter() - start
        log.info("%s: %s (%s) in %.1f s", name, status, precision, seconds)
        if on_component:
            on_component(name, status, seconds)
    return entries


def export_component(
    snapshot: str | Path, name: str, precision: str, path: Path, target: str, variant: str | None = "auto"
) -> Path:
    """One component of `snapshot` as build_onnx_dir exports it for `target` at `precision`, to `path`."""
    snapshot = Path(snapshot)
    cfg = read_config(snapshot)
    spec = component_specs(cfg)[name]
    module = _module_for(snapshot, cfg, spec, precision, variant, {})
    with onnx_attention(attention_kind(target)):
        return export_onnx(module, spec, path, precision, trace_sizes(cfg))


def _module_for(snapshot, cfg, spec: ComponentSpec, precision, variant, loaded) -> nn.Module:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    if (spec.source, precision) not in loaded:
        loaded[(spec.source, precision)] = load_component(snapshot, spec.source, cfg, dtype=dtype, variant=variant)
    return component_module(loaded[(spec.source, precision)], spec)
