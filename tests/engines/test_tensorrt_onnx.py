"""The TensorRT graphs, run without TensorRT: `export-onnx --target tensorrt` writes the exact files
`build-engines --backend tensorrt` builds from (strongly typed fp16 CLIP and UNet with fp32 islands,
fp32 VAE, no contrib ops), and ONNX Runtime runs, checks and renders with them on the CPU."""

from __future__ import annotations

import copy
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FORBIDDEN_OPS, draws, run_diffusers
from onnx import numpy_helper
from PIL import Image

from svd_trt.calibration.report import psnr
from svd_trt.engines import tensorrt_build
from svd_trt.engines.build import BuildOptions, build_engines, export_onnx
from svd_trt.engines.cli import main as svd_export
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.families.svd.pipeline import SVDPipeline
from svd_trt.manifest import load_manifest
from svd_trt.runtime.trt_runner import Platform
from svd_trt.spec import E2E_MIN_PSNR, FRAME_MAX_ABS

ASSETS = Path(__file__).resolve().parents[2] / "runtime" / "assets"
FP16, FP32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
# Ops whose fp16 form fails first (statistics over thousands of elements, sums of exponentials):
# in an fp16 graph each must read and write fp32 (svd_trt/export/layers.py: fp32 islands).
ISLAND_OPS = ("InstanceNormalization", "LayerNormalization", "Softmax")


@pytest.fixture(scope="module")
def tiny_trt_onnx(tiny_snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-onnx") / "tiny"
    result = CliRunner().invoke(
        svd_export, ["export-onnx", "--model", str(tiny_snapshot), "--out", str(out), "--target", "tensorrt"]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def small_trt_onnx(small_snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-onnx") / "small"
    export_onnx(small_snapshot, out, "tensorrt")
    return out


def _typed_graph(path: Path) -> onnx.GraphProto:
    return onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_graphs_carry_their_precision(size, tiny_trt_onnx, small_trt_onnx):
    directory = tiny_trt_onnx if size == "tiny" else small_trt_onnx
    manifest = load_manifest(directory)
    assert (manifest.backend, manifest.target) == ("onnxruntime", "tensorrt")
    expected = {"image_encoder": FP16, "vae_encoder": FP32, "unet": FP16, "vae_decoder": FP32}
    for name, entry in manifest.components.items():
        graph = _typed_graph(directory / entry.file)
        assert entry.precision == {FP16: "fp16", FP32: "fp32"}[expected[name]]
        weights = Counter(t.data_type for t in graph.initializer if len(t.dims) > 1)
        big = sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) > 1 and t.data_type == FP16)
        total = sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) > 1)
        if expected[name] == FP32:
            assert set(weights) == {FP32}, (name, weights)
        else:
            # fp32 matrices only in the time / conditioning embedding MLPs (an island, per-sample)
            assert big / total > 0.9, (name, big / total)
        ops = Counter(n.op_type for n in graph.node)
        assert not FORBIDDEN_OPS & set(ops) and all(n.domain in ("", "ai.onnx") for n in graph.node)
        types = _elem_types(graph)
        for n in graph.node:
            if n.op_type in ISLAND_OPS:
                assert types[n.input[0]] == FP32 and types[n.output[0]] == FP32, (name, n.name)
    unet_inputs = {i.name: i.type.tensor_type.elem_type for i in _typed_graph(directory / "unet.onnx").input}
    assert unet_inputs == {"sample": FP16, "timestep": FP32, "encoder_hidden_states": FP16, "added_time_ids": FP32}


def test_tensorrt_builds_from_these_very_files(tiny_snapshot, tiny_trt_onnx, tmp_path, monkeypatch):
    """build-engines --backend tensorrt (builder faked) exports the same graphs, by key and by bytes."""
    built = {}
    monkeypatch.setattr(tensorrt_build, "current_platform", lambda: Platform("10.8", "fake GPU", "9.0"))
    monkeypatch.setattr(
        tensorrt_build, "build_engine", lambda onnx_path, engine, *a: built.update({engine.stem: onnx_path})
        or engine.write_bytes(b"plan")
    )
    request = dict(num_frames=(2, 3), height=(32, 64), width=(32, 64))
    build_engines(tiny_snapshot, tmp_path / "e", BuildOptions("tensorrt", request))
    ours, theirs = load_manifest(tiny_trt_onnx), load_manifest(tmp_path / "e-onnx")
    assert {n: e.key for n, e in ours.components.items()} == {n: e.key for n, e in theirs.components.items()}
    for name, path in built.items():
        assert path == tmp_path / "e-onnx" / f"{name}.onnx"
        assert path.read_bytes() == (tiny_trt_onnx / f"{name}.onnx").read_bytes()


def test_check_on_the_cpu_passes_with_fp16_rows_and_reports_peaks(tiny_snapshot, tiny_trt_onnx, tmp_path):
    """The tiny model: its fp16 UNet holds the fp16 row (3e-2) with a wide margin at every timestep
    (a random tiny checkpoint, t from -1.55 to 1.64: max abs 1.9e-3..2.2e-3, diffusers' own fp16
    3.1e-3..4.1e-3). Not the small random model: there the fp16 UNet's max abs error against fp32
    swings between 0.004 and 0.10 across those timesteps, and diffusers' own fp16 UNet's between
    0.019 and 0.075 (measured), so the row would decide by the timesteps drawn (check draws them
    from the snapshot's schedule: engines/accuracy.py component_feed)."""
    engines = tmp_path / "engines"
    shutil.copytree(tiny_trt_onnx, engines)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        svd_export,
        [
            *("check", "--engines", str(engines), "--model", str(tiny_snapshot), "--backend", "onnxruntime"),
            *("--num-frames", "3", "--height", "64", "--width", "64", "--device", "cpu", "--report", str(out)),
        ],
    )
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "unet (fp16): PASS" in result.output and "fp16 peak" in result.output
    md = (out / "report.md").read_text()
    assert "## fp16 activations" in md and "| unet |" in md.split("## fp16 activations")[1]


def test_an_fp16_overflow_fails_the_component(tiny_snapshot, tiny_trt_onnx, tmp_path):
    """One MatMul weight at +-60000 (finite in fp16; random signs, so the products of a zero-mean
    LayerNorm output do not cancel): they sum past 65504, the peak run sees inf, and check fails
    that component with the overflow named."""
    engines = tmp_path / "engines"
    shutil.copytree(tiny_trt_onnx, engines)
    model = onnx.load(str(engines / "image_encoder.onnx"))
    matmul_inputs = {i for n in model.graph.node if n.op_type == "MatMul" for i in n.input}
    weight = next(t for t in model.graph.initializer if t.name in matmul_inputs and t.data_type == FP16)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=tuple(weight.dims))
    big = (60000 * signs).astype(np.float16)
    weight.CopyFrom(numpy_helper.from_array(big, weight.name))
    onnx.save(model, str(engines / "image_encoder.onnx"))
    result = CliRunner().invoke(
        svd_export,
        [
            *("check", "--engines", str(engines), "--model", str(tiny_snapshot), "--num-frames", "2"),
            *("--height", "32", "--width", "32", "--device", "cpu", "--report", str(tmp_path / "r")),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "fp16 tensors overflowed" in result.output and "accuracy FAILED (image_encoder)" in result.output


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_infer_on_the_cpu_is_diffusers_within_fp16_bounds(size, request, monkeypatch):
    """The TensorRT directory rendered by ONNX Runtime here, against diffusers' fp32 pipeline.

    The yardstick is diffusers' own fp16 pipeline on the same inputs: rounding every step, CFG
    amplifies differences, and on the small random model that alone costs ~0.2 max abs (PSNR ~32
    dB). Our fp16 graphs must be as close to fp32 as diffusers' fp16 is (1 dB / 1.5x max abs of
    slack: a different but equally valid rounding order), and above the check's fp16 PSNR bound.
    """
    directory = request.getfixturevalue(f"{size}_trt_onnx")
    reference = request.getfixturevalue(f"{size}_pipe")
    opts = GenerationOptions(num_frames=3, height=64, width=64, num_inference_steps=3, decode_chunk_size=2)
    image = Image.open(ASSETS / "coffee.jpg").convert("RGB")
    with SVDPipeline.from_engine_dir(directory, backend="onnxruntime") as pipe:
        noise, latents = draws(pipe, opts, seed=4)
        ours = pipe(image, opts, latents=latents, image_noise=noise).frames
        resolved = pipe.resolve(opts)
    ref = run_diffusers(reference, image, resolved, latents, noise, monkeypatch)
    half = copy.deepcopy(reference).to(torch.float16)
    theirs = run_diffusers(half, image, resolved, latents.astype(np.float16), noise, monkeypatch)
    err, db = float(np.abs(ours - ref).max()), psnr(ours, ref)
    err16, db16 = float(np.abs(theirs - ref).max()), psnr(theirs, ref)
    print(f"{size} vs diffusers fp32: our fp16 graphs max abs {err:.2e} PSNR {db:.1f} dB; "
          f"diffusers fp16 max abs {err16:.2e} PSNR {db16:.1f} dB")
    assert db >= E2E_MIN_PSNR["fp16"] and db >= db16 - 1.0
    assert err <= max(1.5 * err16, FRAME_MAX_ABS["fp16"])
    assert err > 0, "fp16 rounding must show: otherwise the graphs are not the fp16 ones"
