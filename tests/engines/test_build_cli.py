"""`svd-export build-engines`: TensorRT options, their one-line errors (exit 2), and a build
with the builder faked (TensorRT cannot be installed on our machines)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from svd_trt.engines import tensorrt_build
from svd_trt.engines.cli import main
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.port.checkpoint import read_config
from svd_trt.families.svd.spec import component_specs
from svd_trt.manifest import ComponentEntry, Manifest, load_manifest
from svd_trt.runtime.trt_runner import Platform

PLATFORM = Platform("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"))


def invoke(*args: str):
    return CliRunner().invoke(main, ["build-engines", *args])


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize(
    "options, words",
    [
        (["--num-frames", "25:8"], ["--num-frames 25:8", "min 25 is larger than max 8"]),
        (["--num-frames", "x"], ["--num-frames 'x'", "N or MIN:MAX"]),
        (["--num-frames", "0:4"], ["positive"]),
        (["--height", "64:102"], ["--height 64:102", "multiples of 8"]),
        (["--width", "130"], ["--width 130:130", "multiples of 8"]),
        (["--decode-chunk-size", "0"], ["--decode-chunk-size 0", "positive"]),
        (["--precision", "vae_decoder=int8"], ["--precision vae_decoder=int8", "fp32 or fp16"]),
        (["--unet-precision", "int8"], ["--precision unet=int8 needs --calibration DIR"]),
        (["--precision", "clip=fp16"], ["unknown component"]),
    ],
)
def test_tensorrt_validation_errors(tiny_ckpt, tmp_path, options, words):
    result = invoke(
        "--model", str(tiny_ckpt), "--out", str(tmp_path / "e"), "--backend", "tensorrt", *options
    )
    _one_line_error(result, *words)
    assert list(tmp_path.iterdir()) == []  # nothing exported, nothing staged


def test_timing_cache_needs_the_tensorrt_backend(tiny_ckpt, tmp_path):
    result = invoke("--model", str(tiny_ckpt), "--out", str(tmp_path / "e"), "--timing-cache", "x")
    _one_line_error(result, "--timing-cache applies to --backend tensorrt only")


@pytest.mark.parametrize("options", [["--precision", "clip=fp16"], ["--precision", "vae_decoder=int8"]])
def test_onnxruntime_precisions_are_checked_too(tiny_ckpt, tmp_path, options):
    result = invoke("--model", str(tiny_ckpt), "--out", str(tmp_path / "e"), *options)
    _one_line_error(result, "--precision")
    assert list(tmp_path.iterdir()) == []


def test_missing_snapshot(tmp_path):
    result = invoke("--model", str(tmp_path / "nope"), "--out", str(tmp_path / "e"), "--backend", "tensorrt")
    _one_line_error(result)


def test_without_tensorrt_exit_2_with_install_command(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on our machines, even where it is installed
    result = invoke("--model", str(tiny_ckpt), "--out", str(tmp_path / "e"), "--backend", "tensorrt")
    _one_line_error(result, "TensorRT is not installed", "pip install 'svd-trt[tensorrt]'", "pypi.nvidia.com")
    assert list(tmp_path.iterdir()) == []  # refused before the ONNX export


def fake_onnx_dir(
    snapshot, out, backend, precisions, variant=None, on_component=None, limits=None, force=False, finish=None, protect=()
) -> Manifest:
    """Stands in for the ONNX export (tested in tests/export and test_tensorrt.py): files + manifest."""
    cfg = read_config(snapshot)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, spec in component_specs(cfg).items():
        (out / spec.onnx_file).write_bytes(f"{name} {precisions[name]}".encode())
        entries[name] = ComponentEntry.describe(spec, spec.onnx_file, precisions[name], "k").recorded(out)
    manifest = Manifest(backend, "svd", cfg, entries)
    manifest.save(out)
    return manifest


def test_build_with_a_fake_builder(tiny_ckpt, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tensorrt_build, "current_platform", lambda: PLATFORM)
    monkeypatch.setattr(tensorrt_build, "build_onnx_dir", fake_onnx_dir)
    monkeypatch.setattr(
        tensorrt_build,
        "build_engine",
        lambda onnx, engine, *a: built.append(onnx.stem) or engine.write_bytes(b"x"),
    )
    out, cache = tmp_path / "e", tmp_path / "cache" / "timing.cache"
    args = [
        "--model",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--backend",
        "tensorrt",
        "--timing-cache",
        str(cache),
    ]
    ranges = ["--num-frames", "2:6", "--height", "64:128", "--width", "64:128", "--decode-chunk-size", "4"]
    result = invoke(*args, *ranges, "--precision", "vae_decoder=fp16")
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote 4 tensorrt components" in result.output
    assert sorted(built) == ["image_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert cache.parent.is_dir()
    manifest = load_manifest(out)
    assert manifest.components["vae_decoder"].precision == "fp16"
    assert manifest.components["vae_decoder"].extra["profile"]["latents"]["max"] == [4, 4, 64, 64]
    assert manifest.components["unet"].extra["profile"]["sample"]["opt"] == [2, 4, 8, 64, 64]
    assert load_manifest(tmp_path / "e-onnx").components["vae_decoder"].precision == "fp16"  # beside
    again = invoke(*args, *ranges, "--precision", "vae_decoder=fp16")
    assert again.exit_code == 0 and len(built) == 4  # every engine reused
