"""One real `svd-trt serve --instances 1` on engines whose VAE encoder fails at one height: one
pipeline in memory for both models, each kind of failure with its status, caps refused at
once, the queue timeout, and cancelled requests that free the instance within a step."""

from __future__ import annotations

import time

import pytest
from conftest import FAILING_COMPONENT, FAILING_HEIGHT
from serve_helpers import (
    IMAGE_PATH,
    REQUEST,
    Stream,
    cancel_lines,
    descendants,
    holds_onnxruntime,
    infer_peak_rss,
    needs_triton,
    start_serve,
)

from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.options import GenerationOptions, resolve
from svd_trt.manifest import load_manifest
from svd_trt.memory import MemoryPlan, host_available, resident_bytes
from svd_trt.runtime.serving.caps import RequestCaps
from svd_trt.runtime.serving.client import generate, generate_streaming

pytestmark = needs_triton

QUEUE_TIMEOUT_S = 3
LONG = {**REQUEST, "num_inference_steps": RequestCaps().max_steps}  # minutes here if never cancelled
MIB = 2**20


@pytest.fixture(scope="module")
def server(failing_engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = start_serve(failing_engines, log, 1, 2, "--queue-timeout", str(QUEUE_TIMEOUT_S))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image() -> bytes:
    return IMAGE_PATH.read_bytes()


def refusal(call) -> tuple[str, str, float]:
    """(status, message, seconds) of a request that must fail."""
    from tritonclient.utils import InferenceServerException

    start = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message(), time.monotonic() - start


def test_both_models_share_one_pipeline(server, image, failing_engines, tmp_path):
    assert generate(server.http, image=image, **REQUEST, seed=1)["frames"].shape == (2, 32, 48, 3)
    assert generate_streaming(server.grpc, image=image, **REQUEST, seed=1).outputs["frames"].shape == (
        2,
        32,
        48,
        3,
    )
    processes = {pid: resident_bytes(pid) or 0 for pid in descendants(server.proc.pid)}
    pipelines = [pid for pid in processes if holds_onnxruntime(pid)]
    assert len(pipelines) == 1, f"{len(pipelines)} processes hold ONNX Runtime sessions; want 1"
    pipeline_rss = processes[pipelines[0]]
    infer_rss = infer_peak_rss(failing_engines, tmp_path, ["--image", str(IMAGE_PATH)], REQUEST)
    others = {pid: rss for pid, rss in processes.items() if pid not in pipelines}
    print(
        f"server: pipeline stub {pipeline_rss / MIB:.0f} MiB, svd-trt infer peak {infer_rss / MIB:.0f} MiB "
        f"(ratio {pipeline_rss / infer_rss:.2f}); other processes "
        f"{', '.join(f'{rss / MIB:.0f}' for rss in sorted(others.values()))} MiB; "
        f"all {sum(processes.values()) / MIB:.0f} MiB"
    )
    # The stub and `svd-trt infer` hold the same four sessions, their arenas after the same request
    # and the same numpy/Pillow/ONNX Runtime imports (each adds a few MiB of its own: Triton's
    # utilities, click and PyAV). A second pipeline doubles that, so 1.5 tells one from two.
    assert pipeline_rss < 1.5 * infer_rss
    # The plain model's instance waits and forwards: no pipeline, a fraction of one.
    assert all(rss < pipeline_rss / 2 for rss in others.values()), others


def test_each_failure_has_its_status_and_the_server_keeps_serving(server, image, failing_engines):
    # The request's fault: 400, at once.
    status, message, seconds = refusal(
        lambda: generate(server.http, image=image, **{**REQUEST, "num_inference_steps": 10**6})
    )
    assert (status, message) == (
        "400",
        "num_inference_steps 1000000 is over this server's cap of 200 (svd-trt serve --max-steps)",
    )
    assert seconds < 10  # a million tiny steps would take about a day
    status, message, _ = refusal(lambda: generate(server.http, image=b"not an image", **REQUEST))
    assert (status, message) == ("400", "image: not a readable image (UnidentifiedImageError)")

    # Capacity: a 4096x4096 request needs more memory than this machine has (frames raised until
    # it does, on a machine with more than 95 GiB free): 503, so a load balancer retries elsewhere.
    manifest = load_manifest(failing_engines)
    big = {**REQUEST, "height": 4096, "width": 4096}
    while (
        MemoryPlan(SVD).estimate(manifest.model, resolve(GenerationOptions(**big), manifest.model)).total
        <= host_available()
    ):
        big["num_frames"] *= 2
    assert big["num_frames"] <= RequestCaps().max_frames
    status, message, seconds = refusal(lambda: generate(server.http, image=image, **big))
    assert status == "503" and message.startswith("this request needs about "), message
    assert seconds < 10

    # An engine failing on a valid request: 500, one line naming the component; the traceback
    # (ONNX Runtime's own exception) in the server log.
    status, message, _ = refusal(
        lambda: generate(server.http, image=image, **{**REQUEST, "height": FAILING_HEIGHT})
    )
    assert status == "500" and "\n" not in message
    assert message.startswith(
        f"the engines cannot run this request: {FAILING_COMPONENT}: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "
        "Non-zero status code returned while running Gather node"
    ), message
    log = server.log_text()
    assert "Traceback" in log and "onnxruntime_pybind11_state.InvalidArgument" in log

    # The stream model: the same lines, led by their status (a gRPC stream carries no code).
    _, streamed, _ = refusal(
        lambda: generate_streaming(server.grpc, image=image, **{**REQUEST, "height": FAILING_HEIGHT})
    )
    assert streamed == f"INTERNAL: {message}"
    _, streamed, _ = refusal(lambda: generate_streaming(server.grpc, image=image, **big))
    assert streamed.startswith("UNAVAILABLE: this request needs about ")

    assert generate(server.http, image=image, **REQUEST)["frames"].shape == (2, 32, 48, 3)


def test_a_request_waiting_past_the_queue_timeout_is_refused(server, image):
    running = Stream(server.grpc, image=image, **LONG)
    try:
        running.progress()  # the only pipeline is busy
        status, message, seconds = refusal(lambda: generate(server.http, image=image, **REQUEST))
    finally:
        running.cancel()
    assert (status, message) == ("503", "Request timeout expired")
    # Triton looks at its queue's deadlines about once a second (seen: the timeout + 0.0..1.5 s).
    assert QUEUE_TIMEOUT_S <= seconds < QUEUE_TIMEOUT_S + 5
    assert generate(server.http, image=image, **REQUEST)["frames"].shape == (2, 32, 48, 3)  # served once free


def test_cancelled_requests_free_the_instance_within_a_step(server, image):
    import tritonclient.grpc as grpc

    from svd_trt.runtime.serving import contract
    from svd_trt.runtime.serving.client import input_datatypes, request_arrays, tensors

    # Streamed: cancelled after step 3 is seen. The pipeline checks between steps: it stops after
    # the step running when the cancel arrives, at most one more behind the response in flight.
    before = len(cancel_lines(server.log_text()))
    stream = Stream(server.grpc, image=image, **LONG)
    start = time.monotonic()
    seen = [stream.progress() for _ in range(3)][-1]
    step_s = (time.monotonic() - start) / 2  # two steps between the first and the third response
    stream.cancel()
    assert generate(server.http, image=image, **REQUEST)["frames"].shape == (
        2,
        32,
        48,
        3,
    )  # the instance is free
    (step, total), *_ = cancel_lines(server.log_text())[before:]
    assert total == LONG["num_inference_steps"] and step <= seen + 2, (step, seen)

    # Plain (HTTP/gRPC unary through the plain model, which forwards over BLS): cancelled after 1 s.
    client = grpc.InferenceServerClient(server.grpc)
    try:
        arrays = request_arrays(input_datatypes(client, contract.MODEL), image=image, **LONG)
        call = client.async_infer(contract.MODEL, tensors(grpc, arrays), callback=lambda *_: None)
        time.sleep(1.0)
        call.cancel()
        cancelled_at = time.monotonic()
        assert generate(server.http, image=image, **REQUEST)["frames"].shape == (2, 32, 48, 3)
        waited = time.monotonic() - cancelled_at
    finally:
        client.close()
    lines = cancel_lines(server.log_text())[before:]
    assert len(lines) == 2, lines
    step, total = lines[1]
    # Stopped early, and the next request did not wait for the rest: the 200 steps would take
    # ~200 step times; the cancel is seen within 0.1 s and the pipeline stops after that step.
    assert step < total / 2, (step, total)
    assert waited < 0.25 * total * step_s + 5, (waited, step_s)
