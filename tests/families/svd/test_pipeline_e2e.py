"""The numpy runtime over ONNX Runtime equals diffusers' StableVideoDiffusionPipeline, given the
same initial latents and the same noise-augmentation draw."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import draws, run_diffusers
from PIL import Image
from scheduler_configs import SCHEDULER_CONFIGS, scheduler_config

from svd_trt.families.svd.pipeline import GenerationOptions, SVDPipeline
from svd_trt.spec import FRAME_MAX_ABS

pytestmark = pytest.mark.e2e

ASSETS = Path(__file__).resolve().parents[3] / "runtime" / "assets"
# fp32 end to end: ONNX Runtime vs torch differ by ~1e-6 per call, and the Euler loop
# amplifies by at most the steps' count (the bound's reasoning: svd_trt/spec.py).
FRAME_TOL = FRAME_MAX_ABS["fp32"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_runtime(tiny_engines) -> SVDPipeline:
    return SVDPipeline.from_engine_dir(tiny_engines)


CASES = {
    # name: options; the input image is 600x400, never the output size
    "cfg-f3-chunk2-tail": GenerationOptions(
        num_frames=3, height=32, width=48, num_inference_steps=3, decode_chunk_size=2
    ),
    "no-cfg-f4-portrait": GenerationOptions(
        num_frames=4,
        height=48,
        width=32,
        num_inference_steps=2,
        min_guidance_scale=1.0,
        max_guidance_scale=1.0,
    ),
    "cfg-f5-chunk3-square": GenerationOptions(
        num_frames=5,
        height=40,
        width=40,
        num_inference_steps=2,
        decode_chunk_size=3,
        fps=12,
        motion_bucket_id=40,
        noise_aug_strength=0.1,
        min_guidance_scale=1.5,
        max_guidance_scale=2.5,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_runtime_equals_diffusers(tiny_runtime, tiny_pipe, case, monkeypatch):
    opts = CASES[case]
    image = Image.open(ASSETS / "coffee.jpg").convert("RGB")
    noise, latents = draws(tiny_runtime, opts, seed=3)
    ours = tiny_runtime(image, opts, latents=latents, image_noise=noise).frames
    ref = run_diffusers(tiny_pipe, image, tiny_runtime.resolve(opts), latents, noise, monkeypatch)
    assert ours.shape == ref.shape == (opts.num_frames, opts.height, opts.width, 3)
    err = float(np.abs(ours - ref).max())
    print(f"{case}: max abs frame error vs diffusers {err:.2e}")
    assert err <= FRAME_TOL, f"max abs frame error {err:.2e}"
    assert ours.std() > 1e-3, "frames are constant: the comparison would prove nothing"


@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
def test_every_scheduler_config_equals_diffusers(tiny_runtime, tiny_pipe, name, monkeypatch):
    """A snapshot whose scheduler_config.json is not SVD's (epsilon + discrete timesteps, plain or
    exponential sigmas, ...) still gives diffusers' frames: the runtime reads it from the manifest."""
    from diffusers import EulerDiscreteScheduler

    sched = scheduler_config(name)
    manifest = tiny_runtime.manifest
    model = dataclasses.replace(manifest.model, scheduler=sched)
    ours_pipe = SVDPipeline(dataclasses.replace(manifest, model=model), tiny_runtime.runners)
    monkeypatch.setattr(tiny_pipe, "scheduler", EulerDiscreteScheduler.from_config(sched.to_dict()))
    opts = CASES["cfg-f3-chunk2-tail"]
    image = Image.open(ASSETS / "astronaut.jpg").convert("RGB")
    noise, latents = draws(tiny_runtime, opts, seed=11)
    ours = ours_pipe(image, opts, latents=latents, image_noise=noise).frames
    ref = run_diffusers(tiny_pipe, image, ours_pipe.resolve(opts), latents, noise, monkeypatch)
    err = float(np.abs(ours - ref).max())
    print(f"{name}: max abs frame error vs diffusers {err:.2e}")
    assert err <= FRAME_TOL, f"max abs frame error {err:.2e}"
    assert ours.std() > 1e-3


def test_cli_infer_equals_diffusers_without_torch(tiny_engines, tiny_pipe, tmp_path, monkeypatch):
    """`svd-trt infer` with --latents/--image-noise, run with a `torch` that raises on import."""
    opts = GenerationOptions(num_frames=3, height=32, width=48, num_inference_steps=2, decode_chunk_size=2)
    pipe = SVDPipeline.from_engine_dir(tiny_engines)
    noise, latents = draws(pipe, opts, seed=5)
    np.save(tmp_path / "latents.npy", latents)
    np.save(tmp_path / "noise.npy", noise)
    poison = tmp_path / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text("raise ImportError('svd-trt runtime imported torch')\n")
    out = tmp_path / "video.npy"
    cmd = [
        str(BIN / "svd-trt"),
        "infer",
        "--engines",
        str(tiny_engines),
        "--image",
        str(ASSETS / "coffee.jpg"),
        "--out",
        str(out),
        "--num-frames",
        "3",
        "--height",
        "32",
        "--width",
        "48",
        "--num-inference-steps",
        "2",
        "--decode-chunk-size",
        "2",
        "--latents",
        str(tmp_path / "latents.npy"),
        "--image-noise",
        str(tmp_path / "noise.npy"),
        "--no-progress",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={"PYTHONPATH": str(poison), "PATH": "/usr/bin"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "UNet" in proc.stdout and "overhead" in proc.stdout
    ours = np.load(out)
    ref = run_diffusers(
        tiny_pipe, Image.open(ASSETS / "coffee.jpg"), pipe.resolve(opts), latents, noise, monkeypatch
    )
    assert float(np.abs(ours - ref).max()) <= FRAME_TOL


def test_seeded_runs_repeat_and_differ(tiny_runtime):
    image = Image.open(ASSETS / "chelsea.jpg")
    opts = GenerationOptions(num_frames=2, height=32, width=32, num_inference_steps=1)
    a = tiny_runtime(image, opts, seed=1).frames
    b = tiny_runtime(image, opts, seed=1).frames
    c = tiny_runtime(image, opts, seed=2).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    noise, latents = draws(tiny_runtime, opts, seed=1)
    assert np.array_equal(tiny_runtime(image, opts, latents=latents, image_noise=noise).frames, a)


def test_small_model_at_sizes_that_do_not_halve_evenly(small_engines, small_pipe, monkeypatch):
    """72x120 px = 9x15 latents: the 4-block UNet's skips are 9->5->3 (diffusers' upsample_size path)."""
    pipe = SVDPipeline.from_engine_dir(small_engines[0])
    opts = GenerationOptions(num_frames=2, height=72, width=120, num_inference_steps=2)
    image = Image.open(ASSETS / "rocket.jpg").convert("RGB")
    noise, latents = draws(pipe, opts, seed=7)
    ours = pipe(image, opts, latents=latents, image_noise=noise).frames
    ref = run_diffusers(small_pipe, image, pipe.resolve(opts), latents, noise, monkeypatch)
    err = float(np.abs(ours - ref).max())
    print(f"small 72x120: max abs frame error vs diffusers {err:.2e}")
    assert err <= FRAME_TOL
