"""What every family's pipeline shares: opening an engine directory's runners, the memory check
before every call, finiteness checks on what the engines produce, closing.

A family's pipeline (families/<name>/pipeline.py) subclasses `EnginePipeline` and adds its
`generate`; `open_pipeline` opens the right one for any engine directory (its manifest names the
family).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from svd_trt.errors import EngineError
from svd_trt.family import family_named
from svd_trt.manifest import Manifest, load_manifest
from svd_trt.memory import MemoryPlan, plan_for
from svd_trt.options import PipelineError, flag
from svd_trt.runtime.devices import check_device
from svd_trt.runtime.runners import Runner, open_runner
from svd_trt.runtime.timings import Timed, Timings


class EnginePipeline:
    """Built once from an engine directory (or any runners); each `generate` renders one video."""

    def __init__(
        self,
        manifest: Manifest,
        runners: Mapping[str, Runner],
        memory: MemoryPlan | None = None,
        assets: Mapping[str, Path] | None = None,
    ) -> None:
        """`assets`: the paths of the manifest's other files (a tokenizer), by name."""
        self.family = family_named(manifest.family)
        self.assets = dict(assets or {})
        self.check_model(manifest.model)
        self.manifest = manifest
        self.cfg = manifest.model
        self.specs = manifest.specs()
        self.runners = dict(runners)
        self.memory = memory  # checked before every call; None: unchecked

    @classmethod
    def check_model(cls, cfg: Any) -> None:
        """Refuse, in one line, a model config this pipeline cannot run (before any session opens)."""

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, backend: str | None = None, **options: Any) -> EnginePipeline:
        """Open every component of `engine_dir` with `backend` (default: the one it was built for).

        options: `device` (cpu, cuda, cuda:N; default the backend's own), and the backend's own
        (ONNX Runtime `threads`; torch: see export/torch_backend.py)."""
        manifest = load_manifest(engine_dir)
        cls.check_model(manifest.model)  # before any session is opened
        backend = backend or manifest.backend
        if backend != "torch":  # the torch backend picks and checks its own device
            options["device"] = str(check_device(backend, options.get("device")))
        runners = {
            name: open_runner(engine_dir, name, manifest.components[name], backend, **options)
            for name in manifest.specs()
        }
        memory = plan_for(engine_dir, manifest, backend, options.get("device") or "cpu", loaded=True)
        return cls(manifest, runners, memory, {name: Path(engine_dir) / name for name in manifest.assets})

    def timed(self, name: str, timings: Timings, stage: str) -> Timed:
        """Component `name`'s runner, its calls added to `stage` of `timings` (runtime/timings.py)."""
        return Timed(self.runners[name], self.specs[name], timings, stage)

    @property
    def placement(self) -> str:
        """Where the components run, as their runners report it (one entry per distinct place)."""
        places = [getattr(r, "placement", type(r).__name__) for r in self.runners.values()]
        return "; ".join(dict.fromkeys(places))

    def resolve(self, opts: Any) -> Any:
        """Fill model defaults and reject what the engines cannot run (or memory cannot hold), each with one line."""
        opts = self.family.resolve(opts, self.cfg, self.manifest.limits)
        if self.memory is not None:
            self.memory.check(self.cfg, opts)
        return opts

    def close(self) -> None:
        """Free what the runners hold (TensorRT device buffers); closing twice is harmless."""
        # ExitStack calls every close even when one raises, and then re-raises.
        with contextlib.ExitStack() as stack:
            for runner in self.runners.values():
                if callable(getattr(runner, "close", None)):
                    stack.callback(runner.close)

    def __enter__(self) -> EnginePipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_pipeline(engine_dir: str | Path, backend: str | None = None, **options: Any) -> EnginePipeline:
    """The pipeline of whatever family built `engine_dir`."""
    manifest = load_manifest(engine_dir)
    return family_named(manifest.family).pipeline_class().from_engine_dir(engine_dir, backend, **options)


def check_finite(array: np.ndarray, component: str, what: str) -> None:
    """EngineError naming the component when `array` holds NaN or inf: a broken engine (an fp16
    overflow, the classic GPU failure) must not be written as a black video."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise EngineError(
            f"{component}: {what} are not finite ({bad} of {array.size} values NaN or inf); "
            "nothing was written. An fp16 overflow is the usual cause: check the engines with svd-export check"
        )


def check_draws(given: Mapping[str, np.ndarray | None], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """PipelineError (the request's fault) for a given draw of another shape, or holding NaN or inf."""
    for name, array in given.items():
        if array is None:
            continue
        if name not in shapes:
            raise PipelineError(f"{flag(name)} does not apply to this request (it draws {', '.join(shapes)})")
        if tuple(array.shape) != tuple(shapes[name]):
            raise PipelineError(f"{flag(name)} must have shape {list(shapes[name])}, got {list(array.shape)}")
        check_finite_input(array, flag(name))


def check_finite_input(array: np.ndarray, what: str) -> None:
    """PipelineError (the request's fault) when a given noise array holds NaN or inf."""
    if np.issubdtype(np.asarray(array).dtype, np.number) and not np.isfinite(array).all():
        raise PipelineError(f"{what}: holds NaN or inf values; pass finite noise")
