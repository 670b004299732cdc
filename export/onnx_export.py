"""Export a family's port components to ONNX with dynamic axes, into a self-contained directory.

Graph choices (why): the legacy TorchScript exporter at opset 17, because it takes
`dynamic_axes` directly and writes nn.GroupNorm as Reshape -> InstanceNormalization
(the form every TensorRT parser handles; the native GroupNormalization op of opsets
18/21 has had parser bugs); constant folding on; frames flow through reshapes of the
input shape, so the graph has no Loop or Sequence op. Files past 2 GB keep their
weights in one external data file beside the graph (manifest.data_file), and the checker
runs on the path.

A component is reused from the directory being replaced when its key matches: the snapshot's
weights, precision, target (attention form), opset, torch and onnx versions, the spec's I/O, and
EXPORT_VERSION (this shared export code) and the family's export_version (its port).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch
from onnx import external_data_helper
from torch import nn

from svd_trt.export.checkpoint import component_module
from svd_trt.export.layers import onnx_attention
from svd_trt.family import Family, family_of_snapshot
from svd_trt.manifest import (
    ComponentEntry,
    Manifest,
    ManifestError,
    cache_key,
    data_file,
    entry_problems,
    file_record,
    files_digest,
    load_manifest,
    spec_name,
)
from svd_trt.output_dir import carry, kill_point, writing
from svd_trt.spec import ComponentSpec, Span

log = logging.getLogger(__name__)

OPSET = 17
ONNX_PROTO_LIMIT = 2**31 - 1
# Bump when this export code changes what a graph holds (an fp32 island, a decomposition, a new
# output): graphs of an older version are then exported again, and TensorRT engines rebuilt
# from them. tests/export/test_export_version.py fails when EXPORT_SOURCES change without a bump.
# 1: the first versioned export (fp32 islands, standard or contrib attention, target in the key).
# 2: the family and its port's export_version in the key; shared port layers (export/layers.py) with
#    diffusers' timestep-embedding operation order and no identity Casts.
EXPORT_VERSION = 2
# The shared modules whose code decides the graphs, relative to the source tree's root; each
# family's port_sources() (its port and loader) are versioned by its own export_version.
EXPORT_SOURCES = ("export/onnx_export.py", "export/layers.py", "export/checkpoint.py")
# A step run in the same stage after the export, before the manifest is written (quantization):
# (stage, the directory being replaced, the exported manifest) -> the final manifest.
Finish = Callable[[Path, Path, Manifest], Manifest]


@dataclass(frozen=True)
class ExportOptions:
    """What an export produces; every field is part of the cache key."""

    precisions: dict[str, str] = field(default_factory=dict)
    opset: int = OPSET
    variant: str = "auto"
    target: str = "tensorrt"

    @property
    def attention(self) -> str:
        """families/svd/port/layers.py onnx_attention: ONNX Runtime gets its fused MultiHeadAttention;
        TensorRT fuses the standard ops itself."""
        return "contrib" if self.target == "onnxruntime" else "standard"

    def precision(self, component: str) -> str:
        return self.precisions.get(component, "fp32")


def default_precisions(backend: str, specs: dict[str, ComponentSpec]) -> dict[str, str]:
    """Each spec's precision on the backend's target."""
    return {name: spec.precision_on(backend) for name, spec in specs.items()}


def component_key(
    family: Family, weights_hash: str, spec: ComponentSpec, precision: str, opts: ExportOptions
) -> str:
    """What an exported graph depends on; a graph whose key differs is exported again."""
    io = ComponentEntry.describe(spec, spec.onnx_file, precision, "")
    payload = {
        "family": [family.name, family.export_version],
        "weights": weights_hash,
        "component": spec.name,
        "precision": precision,
        "target": opts.target,
        "attention": opts.attention,
        "opset": opts.opset,
        "export_version": EXPORT_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "io": [io.inputs, io.outputs],
    }
    return cache_key(payload)


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
    gather_external_data(raw, path)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and Constant / attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def gather_external_data(raw: Path, path: Path, alignment: int = 4096) -> None:
    """Write `raw`'s graph to `path` with every external tensor copied, by streaming (never more than
    a buffer in memory: the real UNet / DiT are 6-8 GB), into one `<path>.data`; offsets are page
    aligned so ONNX Runtime can map them."""
    model = onnx.load(str(raw), load_external_data=False)
    data_name = data_file(path.name)
    with open(path.parent / data_name, "wb") as out:
        for tensor in _tensors(model.graph):
            if not external_data_helper.uses_external_data(tensor):
                continue
            info = external_data_helper.ExternalDataInfo(tensor)
            out.write(b"\0" * (-out.tell() % alignment))
            offset = out.tell()
            _copy_range(raw.parent / info.location, info.offset or 0, info.length, out)
            # external_data_helper.set_external_data wants the bytes in the tensor: set the entries
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", offset), ("length", out.tell() - offset)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
    onnx.save_model(model, str(path))


def _copy_range(source: Path, offset: int, length: int | None, out: BinaryIO) -> None:
    """Append `length` bytes of `source` from `offset` (None: to its end) to `out`, 16 MB at a time."""
    with open(source, "rb") as f:
        remaining = os.fstat(f.fileno()).st_size - offset if length is None else length
        f.seek(offset)
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 24))
            if not chunk:
                raise OSError(f"{source}: shorter than the tensor stored in it")
            out.write(chunk)
            remaining -= len(chunk)


def _reusable(out: Path) -> dict[str, ComponentEntry]:
    try:
        components = dict(load_manifest(out, check_sizes=False).components)
    except ManifestError:
        return {}
    # A quantized directory keeps its float component beside the quantized one (`<name>_float`).
    floats = {spec_name(n): e for n, e in components.items() if spec_name(n) != n}
    return {**components, **floats}


def build_onnx_dir(
    snapshot: str | Path,
    out: str | Path,
    target: str = "onnxruntime",
    precisions: dict[str, str] | None = None,
    variant: str = "auto",
    on_component: Callable[[str, str, float], None] | None = None,
    limits: dict[str, Span] | None = None,
    force: bool = False,
    finish: Finish | None = None,
    protect: tuple[Path, ...] = (),
) -> Manifest:
    """Export every component for `target` into `out` (atomically) and write its manifest.

    `target` decides the graphs: each spec's precision on it and the attention form (ONNX
    Runtime's fused contrib node, or standard ops for TensorRT). Either directory runs in ONNX
    Runtime: for TensorRT it holds the exact files `build-engines --backend tensorrt` builds from.

    Components whose key (module doc) matches the existing directory's are reused. The new
    directory is assembled beside `out` and swapped in only when complete (svd_trt/output_dir.py);
    `finish` runs in the same stage (quantization), `protect`: what it reads besides the
    snapshot. `limits`: the request sizes the directory serves (engines/profiles.served_limits);
    none = any size.
    """
    snapshot, out = Path(snapshot), Path(out)
    family = family_of_snapshot(snapshot)
    cfg = family.read_config(snapshot)  # a snapshot the runtime cannot run is refused before any export
    specs = family.component_specs(cfg)
    opts = ExportOptions({**default_precisions(target, specs), **(precisions or {})}, variant=variant, target=target)
    with writing(out, protect=[snapshot, *protect], force=force) as stage:
        old = _reusable(out)
        entries = _export_all(family, snapshot, cfg, specs, opts, out, old, stage, on_component)
        assets = {name: file_record(stage / name) for name in family.write_assets(snapshot, stage)}
        manifest = Manifest(
            "onnxruntime",
            family.name,
            cfg,
            entries,
            source=str(snapshot.resolve()),
            limits=limits or {},
            target=target,
            assets=assets,
        )
        if finish is not None:
            manifest = finish(stage, out, manifest)
        manifest.save(stage)
    return manifest


def _export_all(family, snapshot, cfg, specs, opts, out, old, stage, on_component) -> dict[str, ComponentEntry]:
    sources = dict.fromkeys(spec.source for spec in specs.values())
    hashes = {source: files_digest(family.weight_files(snapshot, source, opts.variant)) for source in sources}
    entries = {}
    loaded: dict[tuple[str, str], nn.Module] = {}
    last_user = {spec.source: n for n, spec in specs.items()}  # free each checkpoint after its last use
    for name, spec in specs.items():
        precision = opts.precision(name)
        key = component_key(family, hashes[spec.source], spec, precision, opts)
        start = time.perf_counter()
        if name in old and old[name].key == key and not entry_problems(out, name, old[name], full=True):
            carry(out, old[name].file_names(out), stage)
            entries[name] = old[name]
            status = "reused"
        else:
            module = _module_for(family, snapshot, cfg, spec, precision, opts.variant, loaded)
            with onnx_attention(opts.attention):
                export_onnx(module, spec, stage / spec.onnx_file, precision, family.trace_sizes(cfg), opts.opset)
            entries[name] = ComponentEntry.describe(spec, spec.onnx_file, precision, key).recorded(stage)
            status = "exported"
        if last_user[spec.source] == name:
            loaded.pop((spec.source, precision), None)  # the real UNet is 6 GB in fp32
        kill_point(f"exported:{name}")
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
    family = family_of_snapshot(snapshot)
    cfg = family.read_config(snapshot)
    spec = family.component_specs(cfg)[name]
    module = _module_for(family, snapshot, cfg, spec, precision, variant, {})
    with onnx_attention(ExportOptions(target=target).attention):
        return export_onnx(module, spec, path, precision, family.trace_sizes(cfg))


def _module_for(family, snapshot, cfg, spec: ComponentSpec, precision, variant, loaded) -> nn.Module:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    if (spec.source, precision) not in loaded:
        loaded[(spec.source, precision)] = family.load_component(snapshot, spec.source, cfg, dtype, variant)
    return component_module(loaded[(spec.source, precision)], spec)
