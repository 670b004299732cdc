"""Seconds per pipeline stage, and the runner wrapper that records them; shared by every family."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from svd_trt.errors import engine_failure
from svd_trt.runtime.runners import Runner
from svd_trt.spec import ComponentSpec


@dataclass
class Timings:
    """Stage label -> seconds, in the order the pipeline first ran them; the denoiser's calls also one
    by one. `overhead` is wall time spent outside component calls (host math, copies, Python);
    `placement`: where the components ran, as their backends report it."""

    denoiser: str  # the stage called once per step: "UNet", "transformer"
    stages: dict[str, float] = field(default_factory=dict)
    steps: list[float] = field(default_factory=list)
    total: float = 0.0
    placement: str = ""

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if stage == self.denoiser:
            self.steps.append(seconds)

    def __getitem__(self, stage: str) -> float:
        return self.stages.get(stage, 0.0)

    @property
    def overhead(self) -> float:
        return self.total - sum(self.stages.values())

    def summary(self) -> str:
        parts = []
        for name, seconds in self.stages.items():
            n = len(self.steps)
            per_step = f" ({seconds / n:.3f} s/step x {n})" if name == self.denoiser and n else ""
            parts.append(f"{name} {seconds:.3f} s{per_step}")
        share = 100 * self.overhead / max(self.total, 1e-9)
        parts += [f"overhead {self.overhead:.3f} s ({share:.2f}%)", f"total {self.total:.3f} s"]
        return " | ".join(parts + ([self.placement] if self.placement else []))


class Timed:
    """Calls one component's runner, adds the wall time to a stage of a Timings, and turns a
    backend's failure into an EngineError naming the component (svd_trt/errors.py)."""

    def __init__(self, runner: Runner, spec: ComponentSpec, timings: Timings, stage: str) -> None:
        self.runner, self.spec, self.timings, self.stage = runner, spec, timings, stage

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Named inputs -> every output as float32."""
        start = time.perf_counter()
        try:
            out = self.runner.run(inputs)
        except Exception as e:
            failure = engine_failure(e, component=self.runner.name)
            if failure is None or failure is e:
                raise
            raise failure from e
        self.timings.add(self.stage, time.perf_counter() - start)
        return {name: np.asarray(out[name], dtype=np.float32) for name in self.spec.output_names}

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """Inputs in the spec's order -> its first output."""
        outputs = self.run(**dict(zip(self.spec.input_names, arrays, strict=True)))
        return outputs[self.spec.output_names[0]]
