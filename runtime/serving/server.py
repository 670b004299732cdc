"""Run the `tritonserver` that PyPI's nvidia-pytriton wheel ships, and end it and all its children.

The wheel carries tritonserver with only the Python backend and one backend stub per
Python version. The stub is a separate process that links the first libpython it finds
and imports the packages of the first `python3` on PATH, so the server is started with
this interpreter's bin directory first on PATH and its libdir first on LD_LIBRARY_PATH;
otherwise a pyenv or venv interpreter ends up with another Python's packages.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from svd_trt.errors import UserError

log = logging.getLogger(__name__)

PIP_SERVE = "pip install 'svd-trt[serve]'"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STUB = "triton_python_backend_stub"


class ServeError(UserError):
    """Triton cannot be found, started or reached; the message is one line."""


@dataclass(frozen=True)
class TritonInstall:
    """The parts of the nvidia-pytriton wheel that run a model repository."""

    server: Path  # bin/tritonserver
    python_backend: Path  # backends/python: libtriton_python.so, triton_python_backend_utils.py
    stub: Path  # the Python-backend stub built for this interpreter's version
    libs: Path  # nvidia_pytriton.libs: the wheel's bundled shared libraries (libcudart, ...)


def find_triton() -> TritonInstall:
    """The tritonserver of the installed nvidia-pytriton wheel; ServeError naming the install command."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(f"serving needs Triton Inference Server from the serve extra: {PIP_SERVE}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        root / "bin" / "tritonserver",
        root / "backends" / "python",
        root / "python_backend_stubs" / version / STUB,
        package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.server, install.python_backend, install.stub, install.libs):
        if not path.exists():
            raise ServeError(
                f"{path}: missing from nvidia-pytriton (Python {version}); reinstall: {PIP_SERVE}"
            )
    return install


def backend_directory(install: TritonInstall, dest: Path) -> Path:
    """`dest`/python: the wheel's Python backend with the stub for this Python beside it.

    A copy, not the wheel's own folder: the wheel is left as pip installed it.
    """
    python = dest / "python"
    shutil.copytree(install.python_backend, python)
    shutil.copy2(install.stub, python / STUB)
    return dest


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with this interpreter's bin first on PATH, and on LD_LIBRARY_PATH
    its libpython's directory and the wheel's libraries (the copied stub's relative RPATH misses them)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = _prepend(str(Path(sys.executable).parent), env.get("PATH"))
    libs = [str(install.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so*")):
        libs.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = _prepend(os.pathsep.join(libs), env.get("LD_LIBRARY_PATH"))
    return env


def _prepend(first: str, rest: str | None) -> str:
    return os.pathsep.join([first, rest]) if rest else first


@dataclass(frozen=True)
class ServerConfig:
    repository: Path | None = None  # the model repository; serve() fills it in
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "127.0.0.1"
    exit_timeout_s: int = 10  # how long in-flight requests may finish after a stop
    verbose: bool = False


class TritonServer:
    """One tritonserver process in its own process group; `stop` ends the group, stubs included."""

    def __init__(self, config: ServerConfig, workdir: Path, log_file: IO | None = None) -> None:
        if config.repository is None:
            raise ValueError("ServerConfig.repository is not set")
        self.config, self.workdir, self.log_file = config, Path(workdir), log_file
        self.install = find_triton()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.address in ("0.0.0.0", "") else self.config.address
        return f"http://{host}:{self.config.http_port}"

    def command(self, backends: Path) -> list[str]:
        c = self.config
        return [
            str(self.install.server),
            f"--model-repository={c.repository}",
            f"--backend-directory={backends}",
            f"--http-address={c.address}",
            f"--http-port={c.http_port}",
            f"--grpc-address={c.address}",
            f"--grpc-port={c.grpc_port}",
            f"--metrics-address={c.address}",
            f"--metrics-port={c.metrics_port}",
            f"--exit-timeout-secs={c.exit_timeout_s}",
            f"--log-verbose={1 if c.verbose else 0}",
            "--strict-readiness=true",
        ]

    def start(self, ready_timeout_s: float = 300.0) -> TritonServer:
        """Start the server and wait until every model is ready; ServeError if it exits first."""
        backends = backend_directory(self.install, self.workdir / "backends")
        cmd = self.command(backends)
        log.info("starting %s", " ".join(cmd))
        self.process = subprocess.Popen(
            cmd,
            env=server_environment(self.install),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT if self.log_file else None,
            start_new_session=True,  # signals go to us; we stop the server (and its stubs) ourselves
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        self._wait_ready(ready_timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServeError(f"tritonserver exited with code {code} while starting; see its log")
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ServeError(f"tritonserver was not ready after {timeout_s:.0f} s; see its log")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> int | None:
        """SIGTERM (Triton finishes in-flight requests within its exit timeout), then SIGKILL the group."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.config.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in time; killing it")
        _kill_group(self.process.pid)
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the thread that started it dies (Linux
    PR_SET_PDEATHSIG), so a `serve` killed with SIGKILL does not leave tritonserver running.
    Start servers from a thread that lives as long as they should (the main thread)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of the server's process group (a stub whose server died)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
