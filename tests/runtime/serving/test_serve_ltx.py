"""LTX-Video engines behind a real tritonserver (`svd-trt serve`, one server for every case here):
text to video and image to video through the plain and the streaming model, equal to `svd-trt
infer`; the request's faults (no prompt, a bad image, an option of another family, the engines'
frame rule, the caps) as one-line 400s; memory as 503; a cancelled stream frees the instance."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ltx_engines
from serve_helpers import (
    IMAGE_PATH,
    LTX_REQUEST,
    Stream,
    cancel_lines,
    descendants,
    holds_onnxruntime,
    infer_peak_rss,
    needs_triton,
    serve_extra_missing,
    start_serve,
)

from svd_trt.families.ltx.family import LTX
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.manifest import load_manifest
from svd_trt.memory import MemoryPlan, host_available, resident_bytes
from svd_trt.runtime.cli import main as svd_trt
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.caps import RequestCaps
from svd_trt.runtime.serving.client import generate, generate_streaming, http_client
from svd_trt.runtime.serving.contract import contract_for
from svd_trt.runtime.video import to_uint8

pytestmark = needs_triton

PROMPT = "A red fox trots through fresh snow at dawn."
FRAMES = (LTX_REQUEST["num_frames"], LTX_REQUEST["height"], LTX_REQUEST["width"], 3)
# The server's ONNX Runtime sessions may run another thread count than the in-process `svd-trt
# infer` reference: float sums in another order can move a value across a uint8 rounding boundary,
# so frames may differ by one level, never more (as for SVD, test_serve_requests.py).
ONE_LEVEL = 1
MIB = 2**20


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, (a.shape, b.shape, a.dtype, b.dtype)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return ltx_engines(tmp_path_factory)


@pytest.fixture(scope="module")
def server(engines, tmp_path_factory):
    """One pipeline, one queue slot per model, the default caps."""
    if serve_extra_missing():
        pytest.skip(serve_extra_missing())
    server = start_serve(engines, tmp_path_factory.mktemp("serve-ltx") / "serve.log", 1, 1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image() -> bytes:
    return IMAGE_PATH.read_bytes()


def infer(engines, tmp_path, seed: int, image: bool = False, **options) -> np.ndarray:
    """uint8 frames `svd-trt infer` writes for the same request (the reference)."""
    out = tmp_path / f"infer-{seed}-{image}.npy"
    args = ["infer", "--engines", str(engines), "--prompt", PROMPT, "--out", str(out), "--seed", str(seed)]
    args += ["--image", str(IMAGE_PATH)] if image else []
    args += [f"--{k.replace('_', '-')}={v}" for k, v in {**LTX_REQUEST, **options}.items()]
    result = CliRunner().invoke(svd_trt, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return to_uint8(np.load(out))


def infer_error(engines, tmp_path, **options) -> str:
    """The message `svd-trt infer` prints after `Error: ` for the same request."""
    args = ["infer", "--engines", str(engines), "--prompt", PROMPT, "--out", str(tmp_path / "x.npy")]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in {**LTX_REQUEST, **options}.items()]
    result = CliRunner().invoke(svd_trt, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("Error: ")


def refusal(call) -> tuple[str, str]:
    """(status, message) of a request that must fail."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message()


def test_metadata_is_the_ltx_contract(server):
    with http_client(server.http) as client:
        for model in (contract.MODEL, contract.STREAM_MODEL):
            meta = client.get_model_metadata(model)
            inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
            assert inputs == contract_for(LTX).datatypes()
        config = client.get_model_config(contract.MODEL)
    optional = {i["name"]: i.get("optional", False) for i in config["input"]}
    assert optional["prompt"] is False and optional["image"] is True and optional["negative_prompt"] is True


def test_text_and_image_to_video_through_both_models_equal_infer(server, engines, image, tmp_path):
    text_ref = infer(engines, tmp_path, 5)
    image_ref = infer(engines, tmp_path, 6, image=True)
    assert max_level_diff(text_ref, image_ref) > 10 * ONE_LEVEL  # the image changes the video: a mix-up shows

    plain = generate(server.http, prompt=PROMPT, **LTX_REQUEST, seed=5)
    assert set(plain) == {"frames"} and plain["frames"].shape == FRAMES
    assert max_level_diff(plain["frames"], text_ref) <= ONE_LEVEL
    plain = generate(server.http, prompt=PROMPT, image=image, **LTX_REQUEST, seed=6)
    assert max_level_diff(plain["frames"], image_ref) <= ONE_LEVEL

    steps = LTX_REQUEST["num_inference_steps"]
    for seed, extra, ref in ((5, {}, text_ref), (6, {"image": image}, image_ref)):
        streamed = generate_streaming(server.grpc, prompt=PROMPT, **extra, **LTX_REQUEST, seed=seed)
        assert streamed.progress == [(i, steps) for i in range(1, steps + 1)]
        assert max_level_diff(streamed.outputs["frames"], ref) <= ONE_LEVEL


def test_both_models_share_one_pipeline(server, engines, tmp_path):
    """After the requests above (both models, text and image to video): one process of the server
    holds ONNX Runtime, about what one `svd-trt infer` holds; the others a fraction of it."""
    processes = {pid: resident_bytes(pid) or 0 for pid in descendants(server.proc.pid)}
    pipelines = [pid for pid in processes if holds_onnxruntime(pid)]
    assert len(pipelines) == 1, f"{len(pipelines)} processes hold ONNX Runtime sessions; want 1"
    pipeline_rss = processes[pipelines[0]]
    infer_rss = infer_peak_rss(
        engines, tmp_path, ["--prompt", PROMPT, "--image", str(IMAGE_PATH)], LTX_REQUEST
    )
    others = sorted(rss for pid, rss in processes.items() if pid not in pipelines)
    print(
        f"LTX server: pipeline stub {pipeline_rss / MIB:.0f} MiB, svd-trt infer peak {infer_rss / MIB:.0f} MiB "
        f"(ratio {pipeline_rss / infer_rss:.2f}); other processes {', '.join(f'{r / MIB:.0f}' for r in others)} MiB"
    )
    # As for SVD (test_serve_capacity.py): the stub and `svd-trt infer` hold the same sessions,
    # arenas and imports, give or take a few MiB each; a second pipeline would double it.
    assert pipeline_rss < 1.5 * infer_rss
    assert all(rss < pipeline_rss / 2 for rss in others), others


def test_mp4_plays_at_the_frame_rate(server):
    # Every kind of input on the wire: BYTES text (the optional negative prompt too), INT32, INT64,
    # and a BOOL (decode_tiling: at 32x48 the whole video is one tile, so only its datatype is tested).
    extra = {"negative_prompt": "blurry", "decode_tiling": True, "frame_rate": 12}
    served = generate(server.http, prompt=PROMPT, **LTX_REQUEST, **extra, seed=1, output_format="mp4")
    with av.open(io.BytesIO(served["video"][0])) as container:
        assert float(container.streams.video[0].average_rate) == 12.0  # LTX's output fps: frame_rate
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [d.shape for d in decoded] == [FRAMES[1:]] * FRAMES[0]


def raw_infer(url: str, arrays: dict[str, np.ndarray]):
    """A plain request of exactly these tensors, bypassing the client's contract check."""
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in arrays.items():
        tensor = http.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    with http_client(url) as client:
        return client.infer(contract.MODEL, inputs)


def test_bad_requests_are_one_line_400s_and_the_server_keeps_serving(server, engines, image, tmp_path):
    frame_rule = infer_error(engines, tmp_path, num_frames=10)
    assert frame_rule.startswith(
        "--num-frames must be 1 + a multiple of 4 (the VAE's temporal ratio), got 10"
    )
    cases = [
        (lambda: generate(server.http, **LTX_REQUEST), "prompt: missing; send UTF-8 text as BYTES [1]"),
        (
            lambda: generate(server.http, image=image, **LTX_REQUEST),
            "prompt: missing; send UTF-8 text as BYTES [1]",
        ),
        (
            lambda: generate(server.http, prompt=PROMPT, image=b"not an image", **LTX_REQUEST),
            "image: not a readable image (UnidentifiedImageError)",
        ),
        (  # the engines' own rule, as `svd-trt infer` says it
            lambda: generate(server.http, prompt=PROMPT, **{**LTX_REQUEST, "num_frames": 10}),
            frame_rule,
        ),
        (
            lambda: generate(server.http, prompt=PROMPT, **{**LTX_REQUEST, "num_inference_steps": 10**6}),
            "num_inference_steps 1000000 is over this server's cap of 200 (svd-trt serve --max-steps)",
        ),
        (  # 1 + 4 * 64 frames: a valid length for these engines, over the default frame cap
            lambda: generate(server.http, prompt=PROMPT, **{**LTX_REQUEST, "num_frames": 257}),
            f"num_frames 257 is over this server's cap of {RequestCaps().max_frames} (svd-trt serve --max-frames)",
        ),
    ]
    for call, expected in cases:
        start = time.monotonic()
        assert refusal(call) == ("400", expected)
        assert time.monotonic() - start < 10  # refused before anything runs

    # An option SVD has and LTX-Video lacks: not in this contract, so Triton itself refuses it.
    arrays = {
        "prompt": np.array([PROMPT.encode()], dtype=object),
        "motion_bucket_id": np.array([127], dtype=np.int32),
    }
    status, message = refusal(lambda: raw_infer(server.http, arrays))
    assert status == "400" and "\n" not in message
    assert "unexpected inference input 'motion_bucket_id'" in message, message

    # The stream model: the same line, led by its status (a gRPC stream carries no code).
    _, streamed = refusal(lambda: generate_streaming(server.grpc, **LTX_REQUEST))
    assert streamed == "INVALID_ARGUMENT: prompt: missing; send UTF-8 text as BYTES [1]"

    assert generate(server.http, prompt=PROMPT, **LTX_REQUEST)["frames"].shape == FRAMES


def test_a_request_that_cannot_fit_is_503(server, engines):
    """Capacity, not the request's fault: frames raised at 4096x4096 (under the caps) until the
    family's estimate exceeds what this machine has free."""
    manifest = load_manifest(engines)
    big = {**LTX_REQUEST, "height": 4096, "width": 4096, "num_frames": 9}
    while MemoryPlan(LTX).estimate(manifest.model, LTX.resolve(LTXOptions(**big), manifest.model)).total <= (
        host_available()
    ):
        big["num_frames"] = 2 * big["num_frames"] - 1  # stays 1 + a multiple of the temporal ratio
    assert big["num_frames"] <= RequestCaps().max_frames
    status, message = refusal(lambda: generate(server.http, prompt=PROMPT, **big))
    assert status == "503" and message.startswith("this request needs about "), message


def test_a_cancelled_stream_frees_the_instance_within_a_step(server):
    before = len(cancel_lines(server.log_text()))
    # Steps of about 0.15 s here (768 video tokens), well over a cancel's round trip; 200 of them
    # would hold the instance for about half a minute.
    long = {**LTX_REQUEST, "height": 96, "width": 128, "num_inference_steps": RequestCaps().max_steps}
    stream = Stream(server.grpc, prompt=PROMPT, **long)
    seen = stream.progress()
    stream.cancel()
    assert (
        generate(server.http, prompt=PROMPT, **LTX_REQUEST)["frames"].shape == FRAMES
    )  # the instance is free
    (step, total), *_ = cancel_lines(server.log_text())[before:]
    # Checked between steps: stopped at most two steps after the one seen (one running, one in flight).
    assert total == long["num_inference_steps"] and step <= seen + 2, (step, seen)
