"""What every benchmark script shares (scripts/bench.py for SVD, scripts/bench_ltx.py, scripts/ltx_memory.py).

Children report their own memory (`rss_mb`, `peak_mb`) or are measured from outside
(`run_process`: wall time and the child's peak RSS from wait4); contenders run interleaved
(`interleaved`: A B A B ..., so a noisy machine slows every contender alike); frames are compared
with the reference's before any time is reported (`frame_errors`, `frame_psnr`); medians with
min-max (`stats`, `cell`); each report replaces its own section of a markdown file
(`update_section`). numpy only: importing this never pulls torch into a parent process, whose
resident set a forked child would inherit into its ru_maxrss.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bench")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


def add_output_args(ap: argparse.ArgumentParser, work: str = "svd-bench", docs: Path = DOCS) -> None:
    """--work (where checkpoints, engines and draws are kept between runs), --json, --docs."""
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / work))
    ap.add_argument("--json", default=None, help="also write every number here")
    ap.add_argument(
        "--docs", default=None, help=f"update this markdown file (e.g. {docs.relative_to(docs.parents[1])})"
    )


# ----------------------------------------------------------------------------- memory of this process


def rss_mb() -> float:
    """Current resident set of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Peak resident set of this process since its exec (VmHWM).

    ru_maxrss is not used alone: Linux carries the parent's resident set at fork into the
    child's ru_maxrss, so a child of a parent that imported torch reports torch's footprint.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- timing hooks


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed_method(obj, attr: str, sink: dict[str, list[float]], key: str, device: str = "cpu") -> None:
    """Wrap obj.attr so each call adds its wall time to sink[key] (synchronised on CUDA)."""
    inner = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        sync(device)
        sink.setdefault(key, []).append(time.perf_counter() - start)
        return out

    setattr(obj, attr, wrapper)


# ----------------------------------------------------------------------------- whole processes


@dataclass(frozen=True)
class ProcessRun:
    """One child process measured from outside: wall seconds from spawn to exit, its peak RSS."""

    wall_s: float
    peak_rss_mb: float  # ru_maxrss from wait4: at least the parent's RSS at fork (keep the parent small)
    stdout: str
    stderr: str


def run_process(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> ProcessRun:
    """Run `cmd` to its end; its own rusage (wait4), not the sum over every child of this process.

    Output goes to files, not pipes: a pipe nobody reads while waiting would block a chatty child.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=None if env is None else dict(env))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{stderr[-3000:]}")
    return ProcessRun(wall, usage.ru_maxrss / 1024, stdout, stderr)


def interleaved(
    contenders: Iterable[str], rounds: int, run: Callable[[str, int], dict]
) -> dict[str, list[dict]]:
    """rounds x (one run per contender, in order): A B A B ...; run(contender, round) -> its result."""
    contenders = list(contenders)
    results: dict[str, list[dict]] = {c: [] for c in contenders}
    for r in range(rounds):
        for c in contenders:
            results[c].append(run(c, r))
            log.info("round %d %s done", r + 1, c)
    return results


# ----------------------------------------------------------------------------- agreement


def npy_frames(path: Path):
    """The frames of a .npy file one at a time, read into a buffer of one frame: the file is never
    mapped, so this process's peak RSS (which a child started later inherits) stays small."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        assert not fortran, path
        for _ in range(shape[0]):
            yield np.fromfile(f, dtype, int(np.prod(shape[1:]))).reshape(shape[1:])


def max_abs_error(ours: Path, ref: Path) -> float:
    """max |ours - ref| over two .npy files of frames (NaN if any is), one frame at a time."""
    shapes = [np.load(p, mmap_mode="r").shape for p in (ours, ref)]
    assert shapes[0] == shapes[1], shapes
    worst = [np.abs(a - b).max() for a, b in zip(npy_frames(ours), npy_frames(ref))]
    return float(np.max(worst)) if worst else 0.0  # np.max, not max(): NaN propagates


def frame_errors(work: Path, contenders: list[str], reference: str = "diffusers") -> dict[str, float]:
    """Max abs frame error of each contender against the reference's frames (frames in [0, 1])."""
    ref = work / f"frames-{reference}.npy"
    return {c: max_abs_error(work / f"frames-{c}.npy", ref) for c in contenders if c != reference}


def frame_psnr(work: Path, contenders: list[str], reference: str = "diffusers") -> dict[str, float]:
    """PSNR (dB, peak 1: frames in [0, 1]) of each contender's frames against the reference's;
    inf when identical, NaN when a frame is not finite (json writes both as Python reads them)."""
    from svd_trt.calibration.report import psnr

    ref = np.load(work / f"frames-{reference}.npy")
    return {c: psnr(np.load(work / f"frames-{c}.npy"), ref) for c in contenders if c != reference}


def disagreeing(errors: Mapping[str, float], tolerance: float) -> dict[str, float]:
    """The contenders whose frames are not within `tolerance` (NaN counts as disagreeing)."""
    return {c: e for c, e in errors.items() if not e <= tolerance}


# ----------------------------------------------------------------------------- statistics and report


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def cell(s: Mapping[str, float], scale: float = 1.0) -> str:
    """A table cell of `stats`: median (min-max)."""
    return f"{s['median'] * scale:.3f} ({s['min'] * scale:.3f}-{s['max'] * scale:.3f})"


def psnr_text(db: float) -> str:
    if db == float("inf"):
        return "inf dB (identical)"
    return f"{db:.2f} dB" if np.isfinite(db) else "n/a (non-finite frames)"


def environment() -> dict[str, str]:
    """Versions and the machine, for the report (imports torch only to read its version, in the parent
    after every child has run)."""
    import onnxruntime

    env = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    for name in ("torch", "diffusers", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = "-"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env["cpu"] = f"{cpu}, {os.cpu_count()} logical cores"
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return env


def update_section(doc: Path, name: str, body: str) -> None:
    """Replace (or append) the text between <!-- bench:name --> markers."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
