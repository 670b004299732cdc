"""What a model family gives the shared layers, and how they find it.

A family (families/<name>/) is one model's port, component descriptions, pipeline and options,
together. The shared layers (engine directory and manifest, export and build, `check`, memory,
serving, CLI plumbing) take a `Family` and name none: they find it by the manifest's `family`
field or by a snapshot's model_index.json, through the registry in families/__init__.py.

numpy only: the runtime imports this. What needs torch (the port) is reached through
`Family.port()`, imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from svd_trt.errors import UserError
from svd_trt.spec import ComponentSpec, Span


class FamilyError(UserError, ValueError):
    """A snapshot or engine directory of no known family: one line."""


@dataclass(frozen=True)
class InputSpec:
    """A conditioning input of a generation: an image file or a text.

    `name` is the flag (--image, --prompt), the Python keyword and the Triton tensor name.
    """

    name: str
    kind: str  # "image" (a file path, or bytes when served) or "text"
    required: bool
    help: str
    default: str | None = None


@dataclass(frozen=True)
class DrawSpec:
    """A random draw of a generation that a user may give as a .npy file (flag --<name>)."""

    name: str
    help: str


class Timings(Protocol):
    total: float

    def summary(self) -> str: ...


@dataclass
class VideoOutput:
    frames: np.ndarray  # [F, H, W, 3] float32 in [0, 1]
    timings: Timings


class Pipeline(Protocol):
    """A family's pipeline over one engine directory (runtime/engine_pipeline.EnginePipeline and its
    `draw` / `generate`); each `generate` renders one video."""

    def resolve(self, opts: Any) -> Any: ...

    def draw(
        self, opts: Any, inputs: Mapping[str, Any] | None = None, given: Mapping[str, np.ndarray | None] | None = None
    ) -> dict[str, np.ndarray]: ...

    def generate(
        self,
        inputs: Mapping[str, Any],
        opts: Any,
        draws: Mapping[str, np.ndarray | None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> VideoOutput: ...

    def close(self) -> None: ...


class Family(Protocol):
    """What families/<name>/family.py implements (families/svd/family.py, families/ltx/family.py).

    numpy side: options, specs, sizes, limits, memory, the pipeline class. Export side (imports
    torch inside the method): read_config, weight_files, load_component, trace_sizes, write_assets,
    write_random_checkpoint, speed_up, port_sources."""

    name: str  # recorded in manifests
    title: str  # in messages
    pipelines: tuple[str, ...]  # model_index.json `_class_name`s it reads
    options: type  # frozen dataclass of generation options (fields carry `help` metadata)
    check_defaults: Mapping[str, Any]  # svd-export check's defaults where they differ from a render's
    inputs: tuple[InputSpec, ...]
    draws: tuple[DrawSpec, ...]  # in the order diffusers draws them
    limit_names: tuple[str, ...]  # option fields whose ranges an engine directory records
    quantizable: str | None  # the component calibration/ can make int8 / fp8, if any
    denoiser: str  # the component run once per step
    presets: tuple[str, ...]  # random-checkpoint sizes
    export_version: int  # of its port: in every exported graph's key (tests pin it to its code)

    # numpy side
    def config_from_dict(self, d: Mapping[str, Any]) -> Any: ...

    def preset(self, size: str) -> Any: ...

    def component_specs(self, cfg: Any) -> dict[str, ComponentSpec]: ...

    def sizes(self, cfg: Any, spec: ComponentSpec, values: Mapping[str, int], batch: int) -> dict[str, int]: ...

    def served_limits(self, cfg: Any, request: Mapping[str, Any], bounded: bool) -> dict[str, Span]: ...

    def resolve(self, opts: Any, cfg: Any, limits: Mapping[str, Span] | None = None) -> Any: ...

    def request_values(self, opts: Any) -> dict[str, int]: ...

    def estimate(self, cfg: Any, opts: Any, attention: str, host_activations: bool) -> Any: ...

    def output_fps(self, opts: Any) -> float: ...

    def schedule_timesteps(self, cfg: Any, opts: Any) -> np.ndarray: ...

    def check_inputs(self) -> dict[str, Any]: ...

    def pipeline_class(self) -> type: ...

    # export side
    def read_config(self, snapshot: str | Path) -> Any: ...

    def weight_files(self, snapshot: str | Path, source: str, variant: str | None) -> list[Path]: ...

    def load_component(self, snapshot: str | Path, source: str, cfg: Any, dtype: Any, variant: str | None = ...) -> Any: ...

    def trace_sizes(self, cfg: Any) -> dict[str, int]: ...

    def write_assets(self, snapshot: str | Path, out: Path) -> list[str]: ...

    def write_random_checkpoint(self, out: Any, size: str, variant: str | None = ..., seed: int = ..., **kw: Any) -> Any: ...

    def speed_up(self, module: Any) -> int: ...

    def port_sources(self) -> tuple[str, ...]: ...


def _registry() -> dict[str, str]:
    from svd_trt.families import REGISTRY

    return REGISTRY


def family_named(name: str) -> Family:
    """The family recorded as `name` (a manifest's `family`)."""
    registry = _registry()
    if name not in registry:
        raise FamilyError(f"unknown model family {name!r}: this svd-trt knows {', '.join(registry)}")
    module, _, attr = registry[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def all_families() -> list[Family]:
    return [family_named(name) for name in _registry()]


def family_of_snapshot(snapshot: str | Path) -> Family:
    """The family whose pipelines include the snapshot's model_index.json `_class_name`."""
    root = Path(snapshot)
    path = root / "model_index.json"
    if not root.is_dir():
        raise FamilyError(f"{root}: not a directory")
    try:
        cls = json.loads(path.read_text()).get("_class_name")
    except FileNotFoundError:
        raise FamilyError(f"{path}: missing; not a diffusers snapshot") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise FamilyError(f"{path}: not valid JSON ({e})") from None
    for family in all_families():
        if cls in family.pipelines:
            return family
    known = ", ".join(p for f in all_families() for p in f.pipelines)
    raise FamilyError(f"{path}: pipeline {cls!r} is none this svd-trt exports ({known})")
