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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svd_trt.engines.profiles import Profile, ProfileRequest, component_profiles
from svd_trt.engines.trt_cache import (
    default_timing_cache,
    engine_key,
    onnx_hash,
    previous_engines,
    reusable,
)
from svd_trt.export.checkpoint import read_config
from svd_trt.export.onnx_export import _link_or_copy, build_onnx_dir, staged_dir
from svd_trt.manifest import QUANTIZED_PRECISIONS as QUANTIZED
from svd_trt.manifest import ComponentEntry, Manifest
from svd_trt.runtime.trt_runner import Platform, current_platform
from svd_trt.spec import ComponentSpec, component_specs

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16")
FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards
OnComponent = Callable[[str, str, float], None]


class BuildError(ValueError):
    """A build request that cannot be met: one line."""


@dataclass(frozen=True)
class TrtBuildOptions:
    """Everything `build-engines --backend tensorrt` takes besides MODEL and OUT."""

    request: ProfileRequest = field(default_factory=ProfileRequest)
    precisions: dict[str, str] = field(default_factory=dict)  # overrides of each spec's gpu_precision
    timing_cache: Path | None = None  # default: one per TensorRT + GPU in the user cache dir
    onnx_dir: Path | None = None  # default: OUT-onnx beside OUT
    variant: str | None = "auto"
    calibration: Path | None = None  # int8 / fp8 UNet: the directory svd-export calibrate wrote


def onnx_dir_for(out: Path) -> Path:
    return out.with_name(f"{out.name}-onnx")


def engine_precisions(specs: dict[str, ComponentSpec], overrides: dict[str, str]) -> dict[str, str]:
    """The specs' GPU precisions (fp16 CLIP + UNet, fp32 VAE) with the user's overrides."""
    for name, precision in overrides.items():
        if name not in specs:
            raise BuildError(f"--precision {name}={precision}: unknown component; choose {', '.join(specs)}")
        if precision in QUANTIZED and name == "unet":
            continue
        if precision not in ENGINE_PRECISIONS:
            raise BuildError(
                f"--precision {name}={precision}: TensorRT engines here are fp32 or fp16 "
                "(int8 / fp8 for the UNet only)"
            )
    return {**{name: spec.gpu_precision for name, spec in specs.items()}, **overrides}


def build_engine(
    onnx_path: Path, engine_path: Path, profile: Profile, precision: str, timing_cache: Path
) -> None:
    """Parse `onnx_path`, build one engine with one optimization profile, write its bytes."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as TrtProfile

    trt_profile = TrtProfile()
    for name, shapes in profile.items():
        trt_profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    # fp32 means strict fp32: no TF32 (Polygraphy's default). A Q/DQ (int8 / fp8) network is
    # explicitly quantized: the flag lets TensorRT honour the Q/DQ pairs, fp16 the float rest.
    config = CreateConfig(
        fp16=precision in ("fp16", *QUANTIZED),
        int8=precision == "int8",
        fp8=precision == "fp8",
        profiles=[trt_profile],
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
    )
    # Parsing from the path lets TensorRT find the external weights beside the graph.
    build = EngineBytesFromNetwork(
        NetworkFromOnnxPath(str(onnx_path)), config=config, save_timing_cache=str(timing_cache)
    )
    engine_path.write_bytes(build())


@dataclass
class _Context:
    """What every component's build shares."""

    out: Path
    stage: Path
    old: dict[str, ComponentEntry]
    platform: Platform
    timing_cache: Path


def _engine_entry(ctx: _Context, spec: ComponentSpec, onnx_path: Path, precision: str, profile: Profile):
    """The component's entry, its engine reused when the key matches, else built."""
    digest = onnx_hash(onnx_path)
    key = engine_key(digest, profile, precision, ctx.platform)
    file = f"{spec.name}.engine"
    old = reusable(ctx.old, spec.name, key)
    if old is not None:
        _link_or_copy(ctx.out / old.file, ctx.stage / file)
        return old, "reused"
    build_engine(onnx_path, ctx.stage / file, profile, precision, ctx.timing_cache)
    extra: dict[str, Any] = {
        "profile": profile,
        "platform": dataclasses.asdict(ctx.platform),
        "onnx_sha256": digest,
    }
    return ComponentEntry.describe(spec, file, precision, key, **extra), "built"


def build_tensorrt_dir(
    snapshot: str | Path,
    out: str | Path,
    options: TrtBuildOptions | None = None,
    on_component: OnComponent | None = None,
) -> Manifest:
    """Export ONNX (GPU precisions), build or reuse one engine per component, write OUT atomically."""
    snapshot, out, options = Path(snapshot), Path(out), options or TrtBuildOptions()
    cfg = read_config(snapshot)
    specs = component_specs(cfg)
    profiles = component_profiles(cfg, options.request)  # range errors before any slow work
    precisions = engine_precisions(specs, options.precisions)
    quantized = precisions["unet"] in QUANTIZED
    if quantized and options.calibration is None:
        raise BuildError(f"the {precisions['unet']} UNet needs --calibration DIR (svd-export calibrate)")
    platform = current_platform()  # TrtError without TensorRT or a GPU
    if precisions["unet"] == "fp8" and _capability(platform) < FP8_MIN_CAPABILITY:
        raise BuildError(
            f"fp8 needs compute capability >= 8.9 (Ada, Hopper); {platform.gpu} is {platform.compute_capability}"
        )
    onnx_dir = options.onnx_dir or onnx_dir_for(out)
    onnx = build_onnx_dir(
        snapshot,
        onnx_dir,
        "tensorrt",
        {**precisions, "unet": "fp32"} if quantized else precisions,  # Q/DQ go into the fp32 graph
        variant=options.variant,
        on_component=_tagged(on_component),
    )
    if quantized:
        onnx = _quantize(onnx_dir, options.calibration, precisions["unet"], on_component)
    timing_cache = options.timing_cache or default_timing_cache(platform)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    log.info("TensorRT %s on %s; timing cache %s", platform.tensorrt_version, platform.gpu, timing_cache)
    old = previous_engines(out)
    with staged_dir(out) as stage:
        ctx = _Context(out, stage, old, platform, timing_cache)
        entries = _build_all(ctx, specs, onnx_dir, onnx.components, profiles, on_component)
        manifest = Manifest("tensorrt", cfg, entries, source=str(snapshot.resolve()))
        manifest.save(stage)
    return manifest


def _capability(platform: Platform) -> tuple[int, ...]:
    return tuple(int(x) for x in platform.compute_capability.split("."))


def _quantize(onnx_dir: Path, calibration: Path, precision: str, on_component) -> Manifest:
    """The ONNX directory's UNet becomes its Q/DQ file; what TensorRT then builds from.

    NVIDIA Model Optimizer places the Q/DQ where TensorRT's fusions expect them and
    calibrates at the recorded (full) shape (calibration/modelopt_quantize.py); ONNX
    Runtime's quantizer stays the ONNX Runtime build's: its layout serves ORT's CPU kernels.
    """
    from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt
    from svd_trt.manifest import load_manifest

    start = time.perf_counter()
    quantize_unet_modelopt(onnx_dir, calibration, precision)
    if on_component:
        on_component(f"unet {precision} q/dq", "quantized", time.perf_counter() - start)
    return load_manifest(onnx_dir)


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
        entries[name], status = _engine_entry(
            ctx, spec, onnx_dir / onnx_entry.file, onnx_entry.precision, profiles[name]
        )
        seconds = time.perf_counter() - start
        log.info("%s: engine %s (%s) in %.1f s", name, status, onnx_entry.precision, seconds)
        if on_component:
            on_component(name, status, seconds)
    return entries
