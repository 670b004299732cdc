"""Helpers for the serving tests: real `svd-trt serve` processes on loopback ports.

Not a conftest.py: a second module named `conftest` would shadow tests/conftest.py for
the tests that import helpers from it. Everything skips, with the reason, when the serve
extra is missing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from svd_trt.runtime.serving.server import die_with_parent

ASSETS = Path(__file__).resolve().parents[3] / "runtime" / "assets"
IMAGE_PATH = ASSETS / "coffee.jpg"
# Small enough for the CI budget, big enough to pass every tiny-model block (as test_infer_cli's).
REQUEST = {"num_frames": 2, "height": 32, "width": 48, "num_inference_steps": 2}
# The tiny LTX-Video model (a VAE with spatial and temporal ratio 4): 9 frames are three latent
# frames, 32x48 pixels 8x12 latents; two steps, CFG on (guidance 3, the default).
LTX_REQUEST = {
    "num_frames": 9,
    "height": 32,
    "width": 48,
    "num_inference_steps": 2,
    "max_sequence_length": 16,
}
LOOPBACK = "127.0.0.1"


def serve_extra_missing() -> str | None:
    """Why the serving tests cannot run here, or None."""
    from svd_trt.runtime.serving.server import ServeError, find_triton

    try:
        find_triton()
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except (ServeError, ImportError) as e:
        return f"the serve extra is not installed ({e}); pip install 'svd-trt[serve]'"
    return None


needs_triton = pytest.mark.skipif(serve_extra_missing() is not None, reason=str(serve_extra_missing()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class ServeProcess:
    """`svd-trt -v serve ...` started by a test; http/grpc are host:port on loopback."""

    proc: subprocess.Popen
    http: str
    grpc: str
    metrics: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def repository(self) -> Path:
        """The temporary model repository it wrote (from its INFO log)."""
        match = re.search(r"wrote Triton repository (\S+) for", self.log_text())
        assert match, self.log_text()[-2000:]
        return Path(match.group(1))

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


def start_serve(
    engines: Path, log: Path, instances: int, max_queue: int, *extra: str, timeout_s: float = 300
) -> ServeProcess:
    """Start `svd-trt serve` (the real CLI, in a subprocess) and wait until Triton is ready;
    `extra`: more `svd-trt serve` arguments."""
    ports = [free_port() for _ in range(3)]
    cmd = [
        sys.executable, "-m", "svd_trt.runtime.cli", "-v", "serve", "--engines", str(engines),
        "--address", LOOPBACK, "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
        "--metrics-port", str(ports[2]), "--instances", str(instances), "--max-queue", str(max_queue), *extra,
    ]  # fmt: skip
    with open(log, "wb") as out:
        # die_with_parent: a pytest killed mid-run leaves no server behind
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
    server = ServeProcess(
        proc, f"{LOOPBACK}:{ports[0]}", f"{LOOPBACK}:{ports[1]}", f"{LOOPBACK}:{ports[2]}", log
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"svd-trt serve exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        if http_ok(f"http://{server.http}/v2/health/ready"):
            return server
        time.sleep(0.3)
    server.stop()
    pytest.fail(f"svd-trt serve not ready after {timeout_s} s:\n{server.log_text()[-3000:]}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Stream:
    """One request to the stream model over gRPC, held open so that a test can cancel it."""

    def __init__(self, url: str, **values) -> None:
        import queue

        from svd_trt.runtime.serving.client import stream_request

        self.responses: queue.Queue = queue.Queue()
        self.client = stream_request(url, lambda result, error: self.responses.put((result, error)), **values)

    def progress(self, timeout_s: float = 120) -> int:
        """The step of the next progress response; fails the test on anything else."""
        result, error = self.responses.get(timeout=timeout_s)
        assert error is None, error
        step = result.as_numpy("step")
        assert step is not None, "expected a progress response"
        return int(step[0])

    def cancel(self) -> None:
        """Cancel the request (gRPC stream cancellation) and close the client."""
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def holds_onnxruntime(pid: int) -> bool:
    """Whether the process has ONNX Runtime loaded (a pipeline's stub)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libonnxruntime" in f.read()
    except OSError:
        return False


def infer_peak_rss(engines: Path, tmp_path: Path, inputs: list[str], request: dict) -> int:
    """Peak RSS of one `svd-trt infer` process on `request` (a wrapper whose only child it is);
    `inputs`: its input flags (--image FILE, --prompt TEXT)."""
    args = ["infer", "--engines", str(engines), *inputs, "--out", str(tmp_path / "v.npy")]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in request.items()] + ["--no-progress"]
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "svd_trt.runtime.cli", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def cancel_lines(log_text: str) -> list[tuple[int, int]]:
    """(step, total) of every request the pipeline model stopped for a client's cancel."""
    return [
        (int(a), int(b))
        for a, b in re.findall(r"cancelled by the client after step (\d+) of (\d+)", log_text)
    ]


def state_dir(server: ServeProcess) -> Path:
    """The server's shared directory (runtime/serving/state.py), beside its model repository."""
    return server.repository().parent / "state"
