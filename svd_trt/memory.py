"""How much memory one request needs, and the one-line refusal when it cannot fit.

Every entry point calls `MemoryPlan.check` with the resolved request before any component runs,
so the CLI, the Python API (a family's pipeline) and serving refuse the same requests. The
family estimates what its components and arrays need at the request's sizes
(families/<name>/memory.py); this module adds the weights still to load, measures what the
host has and refuses. Measured against peak RSS: docs/memory.md. numpy-free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svd_trt.errors import CapacityError

if TYPE_CHECKING:
    from svd_trt.manifest import Manifest

log = logging.getLogger(__name__)

F32 = 4  # bytes; every runtime array and every CPU activation is float32
GIB = 2**30
SKIP_ENV = "SVD_TRT_SKIP_MEMORY_CHECK"


ARRAYS = "the frames"  # the pipeline's own arrays, as messages name them


@dataclass(frozen=True)
class Estimate:
    """Bytes of one request, by where they go."""

    weights: int
    activations: dict[str, int]  # working memory by component, as messages name them ("the UNet")
    arrays: int
    where: str = ""  # the request's sizes, for the message: "25 frames of 576x1024, decode chunk 8"
    lower: str = ""  # the options that lower it, for the message: "--height/--width or --num-frames"

    @property
    def total(self) -> int:
        return self.weights + sum(self.activations.values()) + self.arrays

    @property
    def terms(self) -> dict[str, int]:
        """The activations and the arrays, by name."""
        return {**self.activations, ARRAYS: self.arrays}

    @property
    def widest(self) -> str:
        """The largest term's name (the first of equals), for the message."""
        terms = self.terms
        return max(terms, key=terms.get)


class InsufficientMemory(CapacityError):
    """A request that needs more memory than is available now: capacity (a server answers 503), one line."""


# ----------------------------------------------------------------------------- what is available


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """The container's memory limit minus its working set (usage less inactive file cache); None unlimited."""
    for limit_file, usage_file, stat_key in (
        ("memory.max", "memory.current", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),  # v1
    ):
        limit, usage = _read_int(f"{root}/{limit_file}"), _read_int(f"{root}/{usage_file}")
        if limit is None or usage is None or limit >= 2**60:  # "max" or v1's huge "unlimited"
            continue
        stat = f"{root}/memory.stat" if stat_key == "inactive_file" else f"{root}/memory/memory.stat"
        return max(0, limit - (usage - _stat_field(stat, stat_key)))
    return None


def host_available() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None off Linux."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    if mem is None:
        return None
    cgroup = cgroup_available()
    return mem if cgroup is None else min(mem, cgroup)


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory (VmRSS), this one's by default; None off Linux or when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- the check


@dataclass
class MemoryPlan:
    """Where one pipeline's requests put their memory, and the check `resolve` runs.

    backend/device: activations are checked on the host for ONNX Runtime on the CPU only.
    TensorRT reserves each engine's activation memory for its profile's largest shapes when
    the execution context is created (static allocation), so once the engines are loaded a
    request inside the profile (refused otherwise by `resolve`) needs no more device memory;
    ONNX Runtime's CUDA provider and the torch backend allocate on the GPU with caching
    allocators this model was not measured against. For those only the host arrays are checked.

    `loaded_rss`: this process's RSS once the runners were loaded. Memory it gained since
    (ONNX Runtime's arenas after earlier calls) is reused by the next call, so it counts as
    available.
    """

    family: Any  # svd_trt.family.Family: whose estimate
    backend: str = "onnxruntime"
    device: str = "cpu"
    attention: str = "fused"
    weights: int = 0  # engine bytes still to load (0 once the runners are open)
    loaded_rss: int | None = None
    available: Callable[[], int | None] = field(default=lambda: host_available(), repr=False)

    @property
    def host_activations(self) -> bool:
        return self.backend == "onnxruntime" and self.device == "cpu"

    def estimate(self, cfg: Any, opts: Any) -> Estimate:
        """The family's estimate of a resolved request, plus the weights still to load."""
        est = self.family.estimate(cfg, opts, self.attention, self.host_activations)
        return dataclasses.replace(est, weights=self.weights if self.host_activations else 0)

    def check(self, cfg: Any, opts: Any, pending: int = 0) -> Estimate | None:
        """Refuse, in one line, a request whose estimate exceeds what is available; None when unchecked.

        `pending`: memory other processes' requests in flight will still take (a server's admission,
        runtime/serving/admission.py); it is not available to this one.
        """
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            return None
        available = self.available()
        if available is None:
            return None  # no /proc/meminfo: not Linux, nothing to measure against
        reusable = 0
        now = resident_bytes() if self.loaded_rss is not None else None
        if now is not None:
            reusable = max(0, now - self.loaded_rss)
        est = self.estimate(cfg, opts)
        free = max(0, available + reusable - pending)
        log.info("memory: need about %.2f GiB, %.2f GiB available", est.total / GIB, free / GIB)
        if est.total > free:
            raise InsufficientMemory(refusal(est, free))
        return est


def refusal(est: Estimate, available: int) -> str:
    """The refusal's one line: the estimate, its largest part, what is available, what to lower."""
    widest = est.terms[est.widest]
    return (
        f"this request needs about {est.total / GIB:.1f} GiB of memory ({est.widest}: {widest / GIB:.1f} GiB at "
        f"{est.where}) but {available / GIB:.1f} GiB is available; lower {est.lower} "
        f"(or set {SKIP_ENV}=1 to run anyway)"
    )


def plan_for(
    engine_dir: str | Path, manifest: Manifest, backend: str, device: str = "cpu", loaded: bool = False
) -> MemoryPlan:
    """The plan of an engine directory run by `backend`; `loaded`: its runners are open already."""
    from svd_trt.family import family_named

    attention = "standard" if manifest.target == "tensorrt" else "fused"
    weights = 0
    if not loaded:
        root = Path(engine_dir)
        for name in manifest.specs():  # what the pipeline opens (a quantized directory keeps more)
            entry = manifest.components[name]
            for name in entry.file_names(root):
                if (root / name).is_file():
                    weights += (root / name).stat().st_size
    family = family_named(manifest.family)
    return MemoryPlan(family, backend, device, attention, weights, resident_bytes() if loaded else None)
