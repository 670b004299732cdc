"""Shared fixtures: small random SVD checkpoints built with diffusers' and transformers' own
classes and saved in the real Hugging Face layout (the reference our port must equal)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from svd_trt.families.svd.config import SVDConfig, preset

# The serve extra pins numpy < 2 (nvidia-pytriton), and [test] includes it. Under numpy 1.x's
# value-based promotion, diffusers' EulerDiscreteScheduler (the reference) computes some sigmas and
# timesteps in float64 where numpy 2 (NEP 50) computes float32: its schedule moves by a float32 ulp.
# The runtime matches the numpy 2 reference and computes the same under both rules
# (tests/runtime/test_numpy_promotion.py), so the reference is taken as numpy 2 computes it.
if np.lib.NumpyVersion(np.__version__) < "2.0.0":
    np._set_promotion_state("weak")

if TYPE_CHECKING:  # torch is imported by the tests that use it
    import torch

# The TensorRT / CUDA fakes and their fixtures (no_tensorrt, fake_trt, fake_build, polygraphy_calls).
pytest_plugins = ["trt_fakes"]


# Ops an exported graph must not have: frame handling stays reshapes (no loops or sequences),
# GroupNorm stays InstanceNormalization (GroupNormalization 18/21 had TensorRT parser bugs).
FORBIDDEN_OPS = {
    "Loop",
    "If",
    "Scan",
    "SequenceConstruct",
    "SequenceAt",
    "ConcatFromSequence",
    "GroupNormalization",
}


def assert_same_state_dict(ref: torch.nn.Module, ours: torch.nn.Module) -> None:
    """The port's keys and shapes are the reference's: checkpoints load with no renaming."""
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert set(ours_sd) == set(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert not list(ours.buffers()), "the port keeps no buffers"


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|: the relative error the issues' tolerances refer to."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def perturb_(module, scale: float = 0.02, seed: int = 0) -> None:
    """Add noise to every parameter so zero- or identity-initialised ones cannot hide a bug."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _kwargs(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def diffusers_pipeline(cfg: SVDConfig, seed: int = 0):
    """StableVideoDiffusionPipeline with random weights for `cfg` (perturbed, see perturb_)."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**_kwargs(cfg.unet.to_dict()))
    vae = AutoencoderKLTemporalDecoder(**_kwargs(cfg.vae.to_dict()))
    clip_fields = {f.name: getattr(cfg.clip, f.name) for f in dataclasses.fields(cfg.clip)}
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_fields))
    for i, m in enumerate((unet, vae, image_encoder)):
        perturb_(m, seed=seed + i)
    scheduler = EulerDiscreteScheduler(**_kwargs(cfg.scheduler.to_dict()))
    fe = cfg.feature_extractor
    feature_extractor = CLIPImageProcessor(
        crop_size=224, size=224, image_mean=list(fe.image_mean), image_std=list(fe.image_std)
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    return pipe.to(torch.float32)


def draws(pipe, opts, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The image noise and initial latents of one run of `pipe` (an SVDPipeline), from `seed`."""
    opts = pipe.resolve(opts)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((1, 3, opts.height, opts.width), dtype=np.float32)
    latents = rng.standard_normal(pipe.latent_shape(opts), dtype=np.float32)
    return noise, latents


def run_diffusers(pipe, image, opts, latents, image_noise, monkeypatch) -> np.ndarray:
    """diffusers' pipeline with our arrays: latents as its argument, the image noise patched in."""
    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as svd_mod
    import torch

    real = svd_mod.randn_tensor

    def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
        if tuple(shape) == image_noise.shape:
            return torch.from_numpy(image_noise).to(dtype)
        return real(shape, generator=generator, device=device, dtype=dtype, **kw)

    monkeypatch.setattr(svd_mod, "randn_tensor", fake_randn)
    with torch.no_grad():
        out = pipe(
            image,
            height=opts.height,
            width=opts.width,
            num_frames=opts.num_frames,
            num_inference_steps=opts.num_inference_steps,
            min_guidance_scale=opts.min_guidance_scale,
            max_guidance_scale=opts.max_guidance_scale,
            fps=opts.fps,
            motion_bucket_id=opts.motion_bucket_id,
            noise_aug_strength=opts.noise_aug_strength,
            decode_chunk_size=opts.decode_chunk_size,
            latents=torch.from_numpy(latents),
            output_type="np",
        )
    return np.asarray(out.frames[0])



def size_args(num_frames: int = 2, height: int = 32, width: int = 48, steps: int = 2) -> list[str]:
    """`svd-trt infer` flags for a small, fast request (the tiny model's sizes)."""
    return [
        "--num-frames", str(num_frames), "--height", str(height), "--width", str(width),
        "--num-inference-steps", str(steps),
    ]  # fmt: skip


def save_snapshot(pipe, path: Path, **kwargs) -> Path:
    pipe.save_pretrained(str(path), **kwargs)
    return path


@pytest.fixture(scope="session")
def tiny_pipe():
    return diffusers_pipeline(preset("tiny"))


@pytest.fixture(scope="session")
def tiny_snapshot(tiny_pipe, tmp_path_factory) -> Path:
    return save_snapshot(tiny_pipe, tmp_path_factory.mktemp("snapshots") / "tiny")


@pytest.fixture(scope="session")
def small_pipe():
    return diffusers_pipeline(preset("small"), seed=1)


@pytest.fixture(scope="session")
def small_snapshot(small_pipe, tmp_path_factory) -> Path:
    return save_snapshot(small_pipe, tmp_path_factory.mktemp("snapshots") / "small")


@pytest.fixture(scope="session")
def small_engines(small_snapshot, tmp_path_factory):
    """ONNX Runtime engine directory of the small model: (path, manifest, per-component status)."""
    from svd_trt.export.onnx_export import build_onnx_dir

    out = tmp_path_factory.mktemp("engines") / "small"
    statuses: list[str] = []
    manifest = build_onnx_dir(small_snapshot, out, on_component=lambda n, s, t: statuses.append(s))
    return out, manifest, statuses


@pytest.fixture(scope="session")
def tiny_engines(tiny_snapshot, tmp_path_factory) -> Path:
    from svd_trt.export.onnx_export import build_onnx_dir

    out = tmp_path_factory.mktemp("engines") / "tiny"
    build_onnx_dir(tiny_snapshot, out)
    return out


# An engine that fails on a valid request: the tiny engines with a VAE encoder that ONNX Runtime
# runs as exported at every height but FAILING_HEIGHT, where a Gather indexes out of bounds and
# the real session raises its real exception (onnxruntime_pybind11_state.InvalidArgument). What a
# foreign or broken engine does at run time, for infer, check and a real server alike.
FAILING_HEIGHT = 40
FAILING_COMPONENT = "vae_encoder"


def fail_at_height(path: Path, height: int) -> None:
    """Rewrite an ONNX graph [B, C, H, W] -> y so that it computes y + 0 * y.flat[i], with
    i = 10**9 when H == height (out of bounds: the run fails) and 0 otherwise (y unchanged)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    x, y = graph.input[0].name, graph.output[0].name
    raw = f"{y}_before_fault"
    for node in graph.node:
        node.output[:] = [raw if o == y else o for o in node.output]
    consts = {"f_axis": np.int64(2), "f_height": np.int64(height), "f_big": np.int64(10**9)}
    consts |= {"f_flat": np.array([-1], np.int64), "f_zero": np.float32(0)}
    graph.initializer.extend(numpy_helper.from_array(np.array(v), k) for k, v in consts.items())
    graph.node.extend(
        [
            helper.make_node("Shape", [x], ["f_shape"]),
            helper.make_node("Gather", ["f_shape", "f_axis"], ["f_h"]),
            helper.make_node("Equal", ["f_h", "f_height"], ["f_hit"]),
            helper.make_node("Cast", ["f_hit"], ["f_hit64"], to=TensorProto.INT64),
            helper.make_node("Mul", ["f_hit64", "f_big"], ["f_index"]),
            helper.make_node("Reshape", [raw, "f_flat"], ["f_values"]),
            helper.make_node("Gather", ["f_values", "f_index"], ["f_value"]),
            helper.make_node("Mul", ["f_value", "f_zero"], ["f_nothing"]),
            helper.make_node("Add", [raw, "f_nothing"], [y]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def failing_engines(tiny_engines, tmp_path_factory) -> Path:
    """tiny_engines whose FAILING_COMPONENT fails at run time for height FAILING_HEIGHT only."""
    import shutil

    from svd_trt.manifest import load_manifest

    out = tmp_path_factory.mktemp("engines") / "tiny-failing"
    shutil.copytree(tiny_engines, out)
    manifest = load_manifest(out)
    fail_at_height(out / manifest.components[FAILING_COMPONENT].file, FAILING_HEIGHT)
    entry = manifest.components[FAILING_COMPONENT].recorded(out)  # its new size and hash
    dataclasses.replace(manifest, components={**manifest.components, FAILING_COMPONENT: entry}).save(out)
    return out


# --- calibration: one capture and one INT8 UNet of the small random model, shared
# Small enough for the test budget, big enough to pass every UNet block: the small model's
# four levels need latents in multiples of 8 (64 px); 2 frames keep the temporal layers live.
CAPTURE = {"num_frames": 2, "height": 64, "width": 64, "num_inference_steps": 3, "seed": 0}
CAPTURE_RUNS = 3


@pytest.fixture(scope="session")
def small_calibration(small_engines, tmp_path_factory):
    from svd_trt.calibration.capture import capture_calibration

    engine_dir, _, _ = small_engines
    out = tmp_path_factory.mktemp("calibration") / "small"
    from svd_trt.families.svd.options import GenerationOptions

    index = capture_calibration(engine_dir, None, out, GenerationOptions(**CAPTURE), runs=CAPTURE_RUNS, threads=2)
    return out, index


@pytest.fixture(scope="session")
def small_int8(small_engines, small_calibration, tmp_path_factory):
    """A copy of the small engine directory whose `unet` is the INT8 QDQ file."""
    from svd_trt.calibration.quantize import quantize_unet

    out = tmp_path_factory.mktemp("engines") / "small-int8"
    path = quantize_unet(small_engines[0], small_calibration[0], out=out)
    return out, path


@pytest.fixture(scope="session")
def small_trt_onnx(small_snapshot, tmp_path_factory) -> Path:
    """The TensorRT build's ONNX directory of the small model, fp32 UNet (standard attention ops)."""
    from svd_trt.export.onnx_export import build_onnx_dir

    out = tmp_path_factory.mktemp("engines") / "small-trt-onnx"
    build_onnx_dir(small_snapshot, out, "tensorrt", {"unet": "fp32"})
    return out


def ltx_engines(tmp_path_factory) -> Path:
    """An ONNX Runtime engine directory of the tiny random LTX-Video checkpoint, built once per test
    session with the commands a user runs (svd-export make-checkpoint --family ltx; build-engines)."""
    from click.testing import CliRunner

    from svd_trt.engines.cli import main as svd_export

    root = tmp_path_factory.getbasetemp() / "ltx-serving"
    engines = root / "engines"
    if not (engines / "manifest.json").exists():
        for args in (
            ["make-checkpoint", "--family", "ltx", "--size", "tiny", "--out", str(root / "snapshot")],
            ["build-engines", "--model", str(root / "snapshot"), "--out", str(engines)],
        ):
            result = CliRunner().invoke(svd_export, args)
            assert result.exit_code == 0, result.output
    return engines


@pytest.fixture(scope="session")
def ltx_tiny_engines(tmp_path_factory) -> Path:
    return ltx_engines(tmp_path_factory)


def assert_one_line_error(result, pattern: str, out: Path) -> None:
    """A CLI failure as users must see it: exit 2, one `Error:` line with `pattern`, no traceback,
    and nothing written at or beside `out`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"
