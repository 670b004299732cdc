"""A request the engines cannot serve is refused before any component runs: one line naming the
value and the range, for ONNX Runtime and for TensorRT (faked)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from svd_trt.engines import tensorrt_build
from svd_trt.engines.build import BuildOptions, build_engines
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.manifest import load_manifest
from svd_trt.options import PipelineError
from svd_trt.runtime import engine_pipeline
from svd_trt.runtime.cli import main
from svd_trt.runtime.trt_runner import Platform

SERVED = dict(num_frames=(2, 4), height=(32, 64), width=(32, 64), decode_chunk_size=2)
OK = {"num_frames": 3, "height": 32, "width": 48, "decode_chunk_size": 2, "num_inference_steps": 2}
OUTSIDE = [
    ({"num_frames": 8}, "--num-frames 8 is outside the 2..4"),
    ({"height": 128}, "--height 128 is outside the 32..64"),
    ({"width": 24}, "--width 24 is outside the 32..64"),
    ({"decode_chunk_size": 3}, "--decode-chunk-size 3 is outside the 1..2"),
]
IMAGE = "runtime/assets/coffee.jpg"


@pytest.fixture(scope="module")
def ort_engines(tiny_snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("limits") / "ort"
    build_engines(tiny_snapshot, out, BuildOptions("onnxruntime", SERVED))
    return out


@pytest.fixture(scope="module")
def trt_engines(tiny_snapshot, tmp_path_factory):
    """A TensorRT directory built with the builder faked: engine files are placeholders."""
    out = tmp_path_factory.mktemp("limits") / "trt"
    mp = pytest.MonkeyPatch()
    mp.setattr(tensorrt_build, "current_platform", lambda: Platform("10.8", "fake GPU", "9.0"))
    mp.setattr(tensorrt_build, "build_engine", lambda onnx, engine, *a: engine.write_bytes(b"plan"))
    try:
        build_engines(tiny_snapshot, out, BuildOptions("tensorrt", SERVED))
    finally:
        mp.undo()
    return out


def test_manifest_records_what_is_served(ort_engines, trt_engines):
    for directory in (ort_engines, trt_engines):
        limits = load_manifest(directory).limits
        assert (limits["num_frames"].min, limits["num_frames"].max) == (2, 4)
        assert (limits["height"].max, limits["width"].max, limits["decode_chunk_size"].max) == (64, 64, 2)


@pytest.mark.parametrize("backend", ["ort", "trt"])
@pytest.mark.parametrize("change, words", OUTSIDE)
def test_refused_in_one_line_before_any_component(
    backend, change, words, ort_engines, trt_engines, monkeypatch, tmp_path
):
    engines = ort_engines if backend == "ort" else trt_engines
    opened = []
    monkeypatch.setattr(engine_pipeline, "open_runner", lambda *a, **k: opened.append(a))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in {**OK, **change}.items()]
    start = time.perf_counter()
    result = CliRunner().invoke(
        main, ["infer", "--engines", str(engines), "--image", IMAGE, "--out", str(tmp_path / "x.mp4"), *args]
    )
    seconds = time.perf_counter() - start
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], lines
    # opened == [] is what shows no component ran; the clock only catches a hang: a loaded 2-core
    # machine can stall a process for seconds, so its bound is far above the ~0.1 s a refusal takes
    assert opened == [] and seconds < 30 and not (tmp_path / "x.mp4").exists()


def test_pipeline_refuses_before_the_first_unet_call(ort_engines):
    """The library path too: SVDPipeline.__call__ resolves before CLIP, the VAE or the UNet run."""
    from PIL import Image

    from svd_trt.families.svd.pipeline import SVDPipeline

    pipe = SVDPipeline.from_engine_dir(ort_engines)
    calls = []
    for name, runner in pipe.runners.items():
        run = runner.run
        runner.run = lambda inputs, name=name, run=run: calls.append(name) or run(inputs)
    image = Image.new("RGB", (64, 64))
    with pytest.raises(PipelineError, match="--num-frames 8 is outside the 2..4"):
        pipe(image, GenerationOptions(**{**OK, "num_frames": 8}))
    assert calls == []
    pipe(image, GenerationOptions(**OK, seed=0))  # inside: runs
    assert calls.count("unet") == OK["num_inference_steps"]
