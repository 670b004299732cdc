"""svd_trt/memory.py: the estimate against measured peak RSS, and the one-line refusal before any
component runs (CLI and Python API), its override, and what counts as available."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import size_args
from PIL import Image
from refusals import invoke_traced, refusal_line

from svd_trt import memory
from svd_trt.families.svd import memory as svd_memory
from svd_trt.families.svd import pipeline
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.options import GenerationOptions, resolve
from svd_trt.manifest import load_manifest
from svd_trt.runtime import engine_pipeline
from svd_trt.runtime.cli import main

GIB = 2**30
IMAGE = str(Path(__file__).resolve().parents[1] / "runtime" / "assets" / "coffee.jpg")

# A subprocess: RSS before the engines are opened, then the peak (VmHWM) after one call.
MEASURE = """
import json, sys
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.families.svd.pipeline import SVDPipeline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

image = load_image(sys.argv[2])
before = status("VmRSS")
pipe = SVDPipeline.from_engine_dir(sys.argv[1], threads=2)
pipe(image, GenerationOptions(**json.loads(sys.argv[3])))
print(json.dumps({"peak": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from Linux's /proc")
def test_estimate_is_close_to_the_measured_peak(small_engines):
    """One run of the small model (8 frames of 256x256, decoded in one chunk): the estimate,
    weights counted at their file size, is within [0.8, 1.25] of the process's peak RSS growth.
    Measured over seven requests of the small model and of SVD's full-size VAE: 0.87..1.10
    (docs/memory.md); ONNX Runtime's arena grows in doubling regions, so single runs scatter."""
    engine_dir, manifest, _ = small_engines
    request = {
        "num_frames": 8,
        "height": 256,
        "width": 256,
        "decode_chunk_size": 8,
        "num_inference_steps": 1,
        "seed": 0,
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(engine_dir), IMAGE, json.dumps(request)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    plan = memory.plan_for(engine_dir, manifest, "onnxruntime")
    estimate = plan.estimate(manifest.model, resolve(GenerationOptions(**request), manifest.model))
    assert 0.8 <= estimate.total / peak <= 1.25, (estimate, peak)
    assert estimate.widest == "the VAE decoder"  # 8 frames at full resolution: the decoder dominates


def _short_of_memory(monkeypatch, gib: float) -> None:
    monkeypatch.setattr(memory, "host_available", lambda: int(gib * GIB))


@pytest.fixture
def no_runner(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a runner was opened: the memory check came too late")

    monkeypatch.setattr(engine_pipeline, "open_runner", refuse)


def test_the_issues_4096_request_is_refused_at_once(tiny_engines, tmp_path, monkeypatch, no_runner):
    """4096x4096 ran for minutes and grew past 11 GB; now: one line naming the estimate, the
    largest part and what is available, before any component is opened."""
    _short_of_memory(monkeypatch, 11.0)
    out = tmp_path / "v.mp4"
    args = ["infer", "--engines", str(tiny_engines), "--image", IMAGE, "--out", str(out)]
    args += ["--height", "4096", "--width", "4096", "--num-inference-steps", "1"]
    result, peak = invoke_traced(main, args)
    # "At once", without a clock (a shared 2-core machine can stall any process for seconds): nothing
    # of the request's size was allocated; the image noise a run draws first is 192 MiB at 4096x4096
    # (numpy's arrays are traced; the refusal itself peaks near 2 MiB)
    assert peak < 64 * 2**20, peak
    line = refusal_line(result)
    assert "(the UNet: " in line  # the tiny model's VAE halves the size: its UNet sees 2048x2048 latents
    assert "11.0 GiB is available" in line and "4 frames of 4096x4096" in line
    assert memory.SKIP_ENV in line and not out.exists()


def test_the_override_runs_it_anyway(tiny_engines, tmp_path, monkeypatch):
    _short_of_memory(monkeypatch, 0.0)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    out = tmp_path / "v.gif"
    args = [*size_args(steps=1), "--no-progress"]
    result = CliRunner().invoke(
        main, ["infer", "--engines", str(tiny_engines), "--image", IMAGE, "--out", str(out), *args]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_the_python_api_checks_too(tiny_engines, monkeypatch):
    pipe = pipeline.SVDPipeline.from_engine_dir(tiny_engines)
    calls = []
    for runner in pipe.runners.values():
        run = runner.run
        runner.run = lambda inputs, run=run: calls.append(1) or run(inputs)
    _short_of_memory(monkeypatch, 1.0)
    with pytest.raises(memory.InsufficientMemory, match="GiB is available"):
        pipe(Image.new("RGB", (64, 64)), GenerationOptions(height=2048, width=2048, num_inference_steps=1))
    assert calls == []


def test_memory_the_pipeline_already_holds_is_reused(monkeypatch):
    """ONNX Runtime's arenas keep their peak after a call: the same request again needs nothing new."""
    cfg = preset("small")
    opts = resolve(GenerationOptions(height=512, width=512), cfg)
    need = svd_memory.estimate(cfg, opts).total
    monkeypatch.setattr(memory, "resident_bytes", lambda: 1 * GIB + need)  # the arenas of an earlier call
    plan = memory.MemoryPlan(SVD, loaded_rss=1 * GIB, available=lambda: 0)
    assert plan.check(cfg, opts) is not None
    plan = memory.MemoryPlan(SVD, loaded_rss=1 * GIB + need // 2, available=lambda: 0)
    with pytest.raises(memory.InsufficientMemory):
        plan.check(cfg, opts)


def test_unknown_availability_is_not_checked():
    plan = memory.MemoryPlan(SVD, available=lambda: None)  # no /proc/meminfo: not Linux
    assert (
        plan.check(preset("small"), resolve(GenerationOptions(height=8192, width=8192), preset("small")))
        is None
    )


def test_tensorrt_checks_only_the_host_arrays():
    """TensorRT reserves activation memory for the profile when the engines load (static
    allocation): a request inside the profile adds only the pipeline's own arrays."""
    cfg = preset("small")
    opts = resolve(GenerationOptions(height=512, width=512), cfg)
    est = memory.MemoryPlan(SVD, "tensorrt", device="cuda", weights=10 * GIB).estimate(cfg, opts)
    assert est.activations == {} and est.weights == 0
    assert est.total == est.arrays == svd_memory.estimate(cfg, opts).arrays


def test_standard_attention_counts_the_score_matrices():
    """TensorRT-target graphs run in ONNX Runtime materialise [B*F, heads, L, L] twice (logits, softmax)."""
    cfg = preset("full")
    opts = resolve(GenerationOptions(num_frames=25, decode_chunk_size=8), cfg)
    fused, standard = svd_memory.estimate(cfg, opts, "fused"), svd_memory.estimate(cfg, opts, "standard")
    tokens = (576 // 8) * (1024 // 8)
    scores = 2 * 2 * 25 * 5 * tokens * tokens * 4  # CFG batch 2, 25 frames, 5 heads at level 0
    assert standard.activations["the UNet"] - fused.activations["the UNet"] == scores
    # families/svd/port/layers.py: "85 GB for SVD-XT's first UNet level" per score tensor; logits and softmax: twice
    assert standard.widest == "the UNet" and scores == 2 * 84_934_656_000


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_cgroup_limit_caps_what_is_available(tmp_path, layout):
    """In a container MemAvailable is the host's: the cgroup's limit minus its working set
    (usage less inactive file cache) is what the process can really get."""
    if layout == "v2":
        (tmp_path / "memory.max").write_text(f"{8 * GIB}\n")
        (tmp_path / "memory.current").write_text(f"{5 * GIB}\n")
        (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {1 * GIB}\n")
    else:
        (tmp_path / "memory").mkdir()
        (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{8 * GIB}\n")
        (tmp_path / "memory" / "memory.usage_in_bytes").write_text(f"{5 * GIB}\n")
        (tmp_path / "memory" / "memory.stat").write_text(f"total_inactive_file {1 * GIB}\n")
    assert memory.cgroup_available(str(tmp_path)) == 4 * GIB
    (tmp_path / ("memory.max" if layout == "v2" else "memory/memory.limit_in_bytes")).write_text("max\n")
    assert memory.cgroup_available(str(tmp_path)) is None


def test_weights_still_to_load_are_counted_before_loading(tiny_engines):
    manifest = load_manifest(tiny_engines)
    plan = memory.plan_for(tiny_engines, manifest, "onnxruntime")
    files = sum((Path(tiny_engines) / manifest.components[n].file).stat().st_size for n in manifest.specs())
    assert plan.weights == files and plan.loaded_rss is None
    loaded = memory.plan_for(tiny_engines, manifest, "onnxruntime", loaded=True)
    assert loaded.weights == 0 and loaded.loaded_rss is not None
    assert (
        dataclasses.replace(plan, backend="torch")
        .estimate(manifest.model, resolve(GenerationOptions(), manifest.model))
        .weights
        == 0
    )


def test_validation_does_not_import_the_memory_model():
    """options.py validates requests; memory.py admits them and imports options, never the reverse."""
    code = (
        "import sys, svd_trt.options, svd_trt.families.svd.options, svd_trt.families.ltx.options; "
        "assert 'svd_trt.memory' not in sys.modules, 'options imports memory'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
