"""Seconds per pipeline stage, and the runner wrapper that records them; shared by every family."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from svd_trt.runtime.runners import Runner


@dataclass
class Timings:
    """Stage label -> seconds, in the order the pipeline first ran them; the denoiser's calls also one by one.

    `overhead` is wall time spent outside component calls (host math, copies, Python).
    """

    denoiser: str  # the stage called once per step: "UNet", "transformer"
    stages: dict[str, float] = field(default_factory=dict)
    steps: list[float] = field(default_factory=list)
    total: float = 0.0

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
            per_step = f" ({seconds / len(self.steps):.3f} s/step x {len(self.steps)})" if name == self.denoiser else ""
            parts.append(f"{name} {seconds:.3f} s{per_step}")
        share = 100 * self.overhead / max(self.total, 1e-9)
        parts += [f"overhead {self.overhead:.3f} s ({share:.2f}%)", f"total {self.total:.3f} s"]
        return " | ".join(parts)


class Timed:
    """Calls a runner and adds the wall time to one stage of a Timings; outputs as float32."""

    def __init__(self, runner: Runner, timings: Timings, stage: str) -> None:
        self.runner, self.timings, self.stage = runner, timings, stage

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.runner.run(inputs)
        self.timings.add(self.stage, time.perf_counter() - start)
        return {name: np.asarray(value, dtype=np.float32) for name, value in out.items()}
