"""`svd-trt serve`: a model repository in a temporary directory, tritonserver in the foreground.

Runs until SIGINT or SIGTERM (or until tritonserver exits), then stops the server and
its stubs and removes the temporary directory.
"""

from __future__ import annotations

import logging
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from svd_trt.manifest import load_manifest
from svd_trt.runtime.devices import check_device
from svd_trt.runtime.serving.repository import RepositoryOptions, write_repository
from svd_trt.runtime.serving.server import ServeError, ServerConfig, TritonServer, find_triton

log = logging.getLogger(__name__)


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM raise Stopped in the main thread (once); the previous handlers come back after."""

    def handler(signum, frame):
        _ignore_signals()  # a second signal must not interrupt the shutdown
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _ignore_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def serve(
    engine_dir: str | Path,
    server: ServerConfig,
    repository: RepositoryOptions,
    on_ready: Callable[[TritonServer], None] | None = None,
) -> int:
    """Serve `engine_dir` until SIGINT/SIGTERM (then return 0); ServeError if tritonserver fails or exits."""
    find_triton()  # one line naming the install command, before any work
    # The device, checked here (not in each stub): one line before the server starts.
    check_device(load_manifest(engine_dir).backend, repository.device)
    with _stop_on_signals(), tempfile.TemporaryDirectory(prefix="svd-trt-serve-") as tmp:
        triton = None
        try:
            state = Path(tmp) / "state"  # the instances' shared directory (state.py), removed with tmp
            models = write_repository(engine_dir, Path(tmp) / "models", replace(repository, state_dir=state))
            triton = TritonServer(replace(server, repository=models), workdir=Path(tmp))
            triton.start()
            if on_ready:
                on_ready(triton)
            code = triton.process.wait()
            raise ServeError(f"tritonserver exited with code {code}")
        except Stopped as s:
            log.info("%s: stopping tritonserver", s)
            return 0
        finally:
            _ignore_signals()  # nothing may interrupt the shutdown
            if triton is not None:
                triton.stop()
