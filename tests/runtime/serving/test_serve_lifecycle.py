"""`svd-trt serve` with 1 instance and 1 queue slot per model: a full queue is refused at once,
and SIGTERM stops the server, its stubs and its temporary repository within 30 s."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from serve_helpers import IMAGE_PATH, REQUEST, alive, descendants, http_ok, needs_triton, start_serve

from svd_trt.runtime.serving.client import generate

pytestmark = needs_triton

# Long enough that every request below reaches the server while the first is still running,
# even on an idle machine (the tiny model takes tens of ms per step there, more under load).
LONG = {**REQUEST, "num_inference_steps": 30}


@pytest.fixture(scope="module")
def server(tiny_engines, tmp_path_factory):
    server = start_serve(
        tiny_engines, tmp_path_factory.mktemp("serve") / "serve.log", instances=1, max_queue=1
    )
    yield server
    server.stop()


def test_full_queue_is_refused_at_once(server):
    from tritonclient.utils import InferenceServerException

    image = IMAGE_PATH.read_bytes()
    start = Barrier(4)

    def one(seed: int):
        start.wait()
        t = time.monotonic()
        try:
            generate(server.http, image=image, **LONG, seed=seed)
            return "served", None, time.monotonic() - t
        except InferenceServerException as e:
            return e.message(), e.status(), time.monotonic() - t

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    served = [r for r in results if r[0] == "served"]
    refused = [r for r in results if r[0] != "served"]
    # One request runs, one waits in the queue, the other two find the queue full.
    assert len(served) == 2 and len(refused) == 2, results
    for message, status, _ in refused:
        assert message.endswith("Exceeds maximum queue size") and status == "503", (message, status)
    # "At once": each refusal came back before the first accepted request had even finished.
    assert max(r[2] for r in refused) < min(r[2] for r in served), results


def test_sigterm_stops_server_stubs_and_repository(server):
    processes = descendants(server.proc.pid)
    assert len(processes) >= 3, processes  # tritonserver and one stub per model instance
    repository = server.repository()
    assert repository.is_dir()
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(30)
    elapsed = time.monotonic() - start
    assert code == 0, server.log_text()[-2000:]
    assert elapsed < 30
    assert not [p for p in processes if alive(p)], "processes left behind"
    assert not repository.parent.exists(), "temporary repository left behind"
    assert not http_ok(f"http://{server.http}/v2/health/live")
    assert "stopped" in server.log_text().splitlines()[-1]
