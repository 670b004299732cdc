"""Requests to a real tritonserver started by `svd-trt serve` (tiny engines, ONNX Runtime, loopback)."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import (
    IMAGE_PATH,
    REQUEST,
    Stream,
    needs_triton,
    serve_extra_missing,
    start_serve,
    state_dir,
)

from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.options import GenerationOptions, resolve
from svd_trt.families.svd.pipeline import SVDPipeline
from svd_trt.manifest import load_manifest
from svd_trt.memory import GIB, MemoryPlan
from svd_trt.runtime.cli import main as svd_trt
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.client import generate, generate_streaming, http_client
from svd_trt.runtime.serving.contract import contract_for
from svd_trt.runtime.video import to_uint8

pytestmark = needs_triton

# The server's ONNX Runtime sessions run 1 thread each (2 cores / 2 instances) and the
# reference runs 2: float sums in another order can move a value across a rounding
# boundary, so uint8 frames may differ by one level, never more.
ONE_LEVEL = 1


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, (a.shape, b.shape, a.dtype, b.dtype)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


MAX_FRAMES = 3  # the served engines' frame limit, so a request can ask for sizes they do not serve
# A request 4x REQUEST's pixels; the server's --memory-limit has room for one of them in flight
# (and for any two REQUESTs), not for two: server-wide admission must refuse the second.
BIG = {**REQUEST, "height": 64, "width": 96}


def estimated_bytes(engines, **options) -> int:
    """svd_trt.memory's estimate of a request, as the server's admission computes it."""
    manifest = load_manifest(engines)
    opts = resolve(GenerationOptions(**options), manifest.model, manifest.limits)
    return MemoryPlan(SVD).estimate(manifest.model, opts).total


@pytest.fixture(scope="module")
def engines(tiny_engines, tmp_path_factory):
    """The tiny engines with num_frames limited to 1..3 in the manifest, as a bounded build records it."""
    out = tmp_path_factory.mktemp("engines") / "tiny-bounded"
    shutil.copytree(tiny_engines, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["limits"]["num_frames"] = {"min": 1, "opt": MAX_FRAMES, "max": MAX_FRAMES}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def triton(engines, tmp_path_factory):
    """One server for this module: 2 pipelines, 2 more requests may queue per model, a memory limit
    with room for one BIG request in flight."""
    if serve_extra_missing():
        pytest.skip(serve_extra_missing())
    big, small = estimated_bytes(engines, **BIG), estimated_bytes(engines, **REQUEST)
    limit = 1.5 * big
    assert 2 * small < limit < 2 * big
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = start_serve(engines, log, 2, 2, "--memory-limit", f"{limit / GIB:.6f}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    return IMAGE_PATH.read_bytes()


@pytest.fixture(scope="module")
def reference(engines, image_bytes):
    """uint8 frames of the in-process pipeline for a seed, computed once per seed."""
    pipe = SVDPipeline.from_engine_dir(engines)
    image = load_image(io.BytesIO(image_bytes))
    cache: dict[int, np.ndarray] = {}

    def frames(seed: int) -> np.ndarray:
        if seed not in cache:
            cache[seed] = to_uint8(pipe(image, GenerationOptions(**REQUEST, seed=seed)).frames)
        return cache[seed]

    return frames


def test_health_ready_and_metadata(triton):
    with http_client(triton.http) as client:
        assert client.is_server_live() and client.is_server_ready()
        for model in (contract.MODEL, contract.STREAM_MODEL):
            assert client.is_model_ready(model)
            meta = client.get_model_metadata(model)
            assert {i["name"]: i["datatype"] for i in meta["inputs"]} == contract_for(SVD).datatypes()
            assert [i["name"] for i in meta["inputs"]] == [s.name for s in contract_for(SVD).inputs]
            assert {o["name"] for o in meta["outputs"]} == {s.name for s in contract.outputs_of(model)}
        config = client.get_model_config(contract.MODEL)
        assert config["max_batch_size"] == 0
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 2
        assert config["instance_group"][0]["count"] == 2


def test_one_request_equals_svd_trt_infer(triton, engines, image_bytes, tmp_path):
    out = tmp_path / "infer.npy"
    args = ["infer", "--engines", str(engines), "--image", str(IMAGE_PATH), "--out", str(out)]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in {**REQUEST, "seed": 7}.items()]
    result = CliRunner().invoke(svd_trt, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    expected = to_uint8(np.load(out))

    served = generate(triton.http, image=image_bytes, **REQUEST, seed=7)
    assert set(served) == {"frames"}  # no video unless asked for
    assert served["frames"].shape == (2, 32, 48, 3)
    assert max_level_diff(served["frames"], expected) <= ONE_LEVEL


def test_four_concurrent_requests_each_equal_their_single_result(triton, image_bytes, reference):
    seeds = [11, 12, 13, 14]
    with ThreadPoolExecutor(len(seeds)) as pool:
        served = list(
            pool.map(lambda s: generate(triton.http, image=image_bytes, **REQUEST, seed=s)["frames"], seeds)
        )
    for seed, frames in zip(seeds, served):
        assert max_level_diff(frames, reference(seed)) <= ONE_LEVEL, seed
    # The check can fail: different seeds give clearly different videos, so a mix-up would show.
    assert min(max_level_diff(served[0], other) for other in served[1:]) > 10 * ONE_LEVEL


def test_mp4_output(triton, image_bytes, reference):
    served = generate(triton.http, image=image_bytes, **REQUEST, seed=11, output_format="mp4")
    assert served["video"].shape == (1,)
    with av.open(io.BytesIO(served["video"][0])) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [d.shape for d in decoded] == [(32, 48, 3)] * 2
    assert max_level_diff(served["frames"], reference(11)) <= ONE_LEVEL


def test_streaming_progress_over_grpc(triton, image_bytes, reference):
    seen = []
    result = generate_streaming(
        triton.grpc, image=image_bytes, on_progress=lambda i, n: seen.append(i), **REQUEST, seed=12
    )
    steps = REQUEST["num_inference_steps"]
    assert result.progress == [(i, steps) for i in range(1, steps + 1)]
    assert seen == list(range(1, steps + 1))
    assert set(result.outputs) == {"frames"}
    assert max_level_diff(result.outputs["frames"], reference(12)) <= ONE_LEVEL


def cli_error(engines, tmp_path, image, **options) -> str:
    """The message `svd-trt infer` prints after `Error: ` for the same input."""
    args = ["infer", "--engines", str(engines), "--image", str(image), "--out", str(tmp_path / "x.npy")]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in {**REQUEST, **options}.items()]
    result = CliRunner().invoke(svd_trt, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("Error: ")


def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(
    triton, engines, image_bytes, tmp_path, reference
):
    from tritonclient.utils import InferenceServerException

    good = tmp_path / "ok.jpg"
    good.write_bytes(image_bytes)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    # (request overrides, the message expected: what `svd-trt infer` prints for the same input;
    # the CLI names the image file where the server names the input)
    cases = [
        ({"image": junk.read_bytes()}, cli_error(engines, tmp_path, junk).replace(str(junk), "image")),
        ({"height": 36}, cli_error(engines, tmp_path, good, height=36)),
        ({"num_frames": 0}, cli_error(engines, tmp_path, good, num_frames=0)),
        ({"num_frames": MAX_FRAMES + 1}, cli_error(engines, tmp_path, good, num_frames=MAX_FRAMES + 1)),
        ({"output_format": "gif"}, "output_format must be one of: mp4; got 'gif'"),
    ]
    assert [m for _, m in cases[:4]] == [
        "image: not a readable image (UnidentifiedImageError)",
        "height and width must be multiples of 8, got 36x48",
        "--num-frames must be positive, got 0",
        "--num-frames 4 is outside the 1..3 these engines serve; "
        "rebuild them with a --num-frames range that covers it",
    ]
    for override, expected in cases:
        request = {**REQUEST, "image": image_bytes, **override}
        with pytest.raises(InferenceServerException) as e:
            generate(triton.http, **request)
        assert e.value.message() == expected
        assert e.value.status() == "400", (expected, e.value.status())

    # Missing `image`: the request goes past Triton (all inputs but image are optional) to the model.
    import tritonclient.http as http

    with http_client(triton.http) as client, pytest.raises(InferenceServerException) as e:
        seeds = np.array([1], dtype=np.int64)
        seed = http.InferInput("seed", [1], "INT64")
        seed.set_data_from_numpy(seeds)
        client.infer(contract.MODEL, [seed])
    assert e.value.message() == "image: missing; send an encoded PNG, JPEG or WebP file as BYTES [1]"

    # The stream model answers the same line; a gRPC stream carries no status, so it leads the message.
    with pytest.raises(InferenceServerException) as e:
        generate_streaming(triton.grpc, image=image_bytes, **{**REQUEST, "num_frames": 0})
    assert e.value.message() == "INVALID_ARGUMENT: --num-frames must be positive, got 0"

    served = generate(triton.http, image=image_bytes, **REQUEST, seed=13)
    assert max_level_diff(served["frames"], reference(13)) <= ONE_LEVEL


def test_metrics_count_requests_and_latency(triton, image_bytes):
    generate(triton.http, image=image_bytes, **REQUEST, seed=1)
    with urllib.request.urlopen(f"http://{triton.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    success = re.search(r'^nv_inference_request_success\{model="generate",version="1"\} (\d+)', text, re.M)
    assert success and int(success.group(1)) >= 1, text[:2000]
    for metric in ("nv_inference_request_duration_us", "nv_inference_queue_duration_us"):
        assert re.search(rf'^{metric}\{{model="generate",version="1"\}} \d+', text, re.M), metric


def test_admission_counts_the_requests_in_flight_in_every_instance(triton, image_bytes):
    """A BIG request runs in one pipeline; a second BIG one, sent to the other (idle) pipeline, is
    refused by the server-wide limit (503) while the first is in flight, and admitted once it left."""
    from tritonclient.utils import InferenceServerException

    ledger = state_dir(triton) / "in_flight"
    first = Stream(triton.grpc, image=image_bytes, **{**BIG, "num_inference_steps": 200})  # the default cap
    try:
        assert first.progress() == 1  # admitted and running
        assert len(list(ledger.glob("*.json"))) == 1
        start = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            generate(triton.http, image=image_bytes, **BIG)
        assert time.monotonic() - start < 10  # refused, not queued behind the first
        assert e.value.status() == "503", e.value.message()
        assert re.fullmatch(
            r"this request needs about [\d.]+ GiB of memory and the 1 in flight hold about [\d.]+ GiB of this "
            r"server's [\d.]+ GiB \(svd-trt serve --memory-limit\); retry later",
            e.value.message(),
        ), e.value.message()
    finally:
        first.cancel()
    deadline = time.monotonic() + 60
    while list(ledger.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(ledger.glob("*.json")), "the cancelled request kept its place in the ledger"
    assert generate(triton.http, image=image_bytes, **BIG)["frames"].shape == (2, 64, 96, 3)
