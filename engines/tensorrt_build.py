"""`build-engines --backend tensorrt`: ONNX at GPU precisions, then one engine per component.

Only `build_engine` touches Polygraphy / TensorRT (imported there, so this module imports
without TensorRT). The rest is orchestration: profiles from the specs, cache keys, reuse
of unchanged engines, and an engine directory staged beside OUT and swapped in whole.
The ONNX files live in their own directory (default OUT-onnx beside OUT), itself cached
by build_onnx_dir, so the engine directory holds only what the runtime loads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svd_trt.engines.build import (
    BuildError,
    BuildOptions,
    OnComponent,
    component_precisions,
    tensorrt_quantize_step,
)
from svd_trt.engines.profiles import Profile, component_profiles
from svd_trt.engines.trt_cache import default_timing_cache, engine_key, previous_engines, reusable
from svd_trt.export.onnx_export import build_onnx_dir
from svd_trt.family import family_of_snapshot
from svd_trt.manifest import ComponentEntry, Manifest
from svd_trt.output_dir import carry, writing
from svd_trt.runtime.trt_runner import Platform, current_platform
from svd_trt.spec import FP8_MIN_CAPABILITY, FP8_NEEDS, ComponentSpec

log = logging.getLogger(__name__)


def onnx_dir_for(out: Path) -> Path:
    return out.with_name(f"{out.name}-onnx")


def build_engine(
    onnx_path: Path, engine_path: Path, profile: Profile, precision: str, timing_cache: Path
) -> None:
    """Parse `onnx_path` strongly typed, build one engine with one optimization profile, write its bytes.

    The ONNX graph carries its precision (fp16 tensors with fp32 islands, fp32 VAE, Q/DQ pairs
    for int8 / fp8), so `precision` sets no builder flag: TensorRT follows the graph's types.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as TrtProfile

    trt_profile = TrtProfile()
    for name, shapes in profile.items():
        trt_profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    # No fp16 / int8 / fp8 flags: precision flags are "not allowed if graph is strongly typed"
    # (trtexec 10.x drops them with that warning; NVIDIA's diffusion demo clears them; kFP16 /
    # kINT8 are deprecated since 10.12, superseded by strong typing). TF32 is still a builder
    # choice for fp32 tensors: off (TensorRT's default is on; Polygraphy clears it unless
    # asked), so the fp32 VAE and the fp32 islands stay strict fp32.
    config = CreateConfig(
        tf32=False,
        profiles=[trt_profile],
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    log.debug("building %s (%s, strongly typed)", onnx_path.name, precision)
    # Parsing from the path lets TensorRT find the external weights beside the graph.
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    build = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))
    engine_path.write_bytes(build())


@dataclass
class _Context:
    """What every component's build shares."""

    out: Path
    stage: Path
    old: dict[str, ComponentEntry]
    platform: Platform
    timing_cache: Path


def _engine_entry(ctx: _Context, spec: ComponentSpec, onnx_dir: Path, onnx_entry: ComponentEntry, profile: Profile):
    """The component's entry, its engine reused when the key matches, else built."""
    digest = onnx_entry.digest()  # the ONNX files as their manifest recorded them: no re-hashing
    precision = onnx_entry.precision
    key = engine_key(digest, profile, precision, ctx.platform)
    file = f"{spec.name}.engine"
    old = reusable(ctx.out, ctx.old, spec.name, key)
    if old is not None:
        carry(ctx.out, [old.file], ctx.stage)
        return old, "reused"
    build_engine(onnx_dir / onnx_entry.file, ctx.stage / file, profile, precision, ctx.timing_cache)
    extra: dict[str, Any] = {
        "profile": profile,
        "platform": dataclasses.asdict(ctx.platform),
        "onnx_digest": digest,
    }
    return ComponentEntry.describe(spec, file, precision, key, **extra).recorded(ctx.stage), "built"


def build_tensorrt_dir(
    snapshot: str | Path,
    out: str | Path,
    options: BuildOptions | None = None,
    on_component: OnComponent | None = None,
) -> Manifest:
    """Export ONNX (GPU precisions), build or reuse one engine per component, write OUT atomically."""
    snapshot, out, options = Path(snapshot), Path(out), options or BuildOptions("tensorrt")
    family = family_of_snapshot(snapshot)
    options.check(family)
    cfg = family.read_config(snapshot)
    specs = family.component_specs(cfg)
    limits = family.served_limits(cfg, options.request, bounded=True)  # range errors before any slow work
    profiles = component_profiles(family, cfg, limits)
    precisions = component_precisions(specs, options.precisions, "tensorrt", family.quantizable)
    quantized = options.quantized
    platform = current_platform()  # TrtError without TensorRT or a GPU
    if quantized == "fp8" and _capability(platform) < FP8_MIN_CAPABILITY:
        raise BuildError(f"fp8 needs {FP8_NEEDS}; {platform.gpu} is {platform.compute_capability}")
    onnx_dir = options.onnx_dir or onnx_dir_for(out)
    finish, protect = (None, ())
    if quantized:
        finish, protect = tensorrt_quantize_step(
            cfg, snapshot, options.calibration, quantized, options.variant, on_component
        )
    onnx = build_onnx_dir(
        snapshot,
        onnx_dir,
        "tensorrt",
        {**precisions, family.quantizable: "fp32"} if quantized else precisions,  # Q/DQ go into the fp32 graph
        variant=options.variant,
        on_component=_tagged(on_component),
        force=options.force,
        finish=finish,
        protect=protect,
    )
    timing_cache = options.timing_cache or default_timing_cache(platform)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    log.info("TensorRT %s on %s; timing cache %s", platform.tensorrt_version, platform.gpu, timing_cache)
    with writing(out, protect=[snapshot, onnx_dir], force=options.force) as stage:
        ctx = _Context(out, stage, previous_engines(out), platform, timing_cache)
        entries = _build_all(ctx, specs, onnx_dir, onnx.components, profiles, on_component)
        carry(onnx_dir, onnx.assets, stage)  # what the runtime reads besides the engines (a tokenizer)
        manifest = Manifest(
            "tensorrt",
            family.name,
            cfg,
            entries,
            source=str(snapshot.resolve()),
            limits=limits,
            assets=dict(onnx.assets),
        )
        manifest.save(stage)
    return manifest


def _capability(platform: Platform) -> tuple[int, ...]:
    return tuple(int(x) for x in platform.compute_capability.split("."))


def _tagged(on_component: OnComponent | None) -> OnComponent | None:
    """Report the ONNX export's components as `<name> onnx`."""
    if on_component is None:
        return None
    return lambda name, status, seconds: on_component(f"{name} onnx", status, seconds)


def _build_all(ctx: _Context, specs, onnx_dir: Path, onnx_entries, profiles, on_component) -> dict:
    entries = {}
    for name, spec in specs.items():
        start = time.perf_counter()
        onnx_entry = onnx_entries[name]
        entries[name], status = _engine_entry(ctx, spec, onnx_dir, onnx_entry, profiles[name])
        seconds = time.perf_counter() - start
        log.info("%s: engine %s (%s) in %.1f s", name, status, onnx_entry.precision, seconds)
        if on_component:
            on_component(name, status, seconds)
    return entries
