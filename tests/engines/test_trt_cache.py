"""Engine cache keys, the ONNX files' digest, the timing cache location and reuse of an old directory."""

from __future__ import annotations

import dataclasses

import pytest

from svd_trt.engines.trt_cache import (
    default_timing_cache,
    engine_key,
    previous_engines,
    reusable,
)
from svd_trt.families.svd.config import preset
from svd_trt.manifest import ComponentEntry, Manifest, data_file
from svd_trt.runtime.trt_runner import Platform

PLATFORM = Platform("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")
PROFILE = {"sample": {"min": (1, 8, 8, 72, 128), "opt": (2, 14, 8, 72, 128), "max": (2, 25, 8, 72, 128)}}
ARGS = {"onnx_digest": "ab" * 32, "profile": PROFILE, "precision": "fp16", "platform": PLATFORM}


def test_same_inputs_same_key():
    assert engine_key(**ARGS) == engine_key(**ARGS)
    # The manifest's JSON turns tuples into lists; the key must not care.
    as_lists = {k: {level: list(v) for level, v in s.items()} for k, s in PROFILE.items()}
    assert engine_key(**{**ARGS, "profile": as_lists}) == engine_key(**ARGS)


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_digest": "cd" * 32},
        {"profile": {"sample": {**PROFILE["sample"], "max": (2, 26, 8, 72, 128)}}},
        {"profile": {"sample": {**PROFILE["sample"], "opt": (2, 25, 8, 72, 128)}}},
        {"precision": "fp32"},
        {"platform": dataclasses.replace(PLATFORM, tensorrt_version="10.9.0.34")},
        {"platform": dataclasses.replace(PLATFORM, gpu="NVIDIA H100 PCIe")},
        {"platform": dataclasses.replace(PLATFORM, compute_capability="8.9")},
    ],
    ids=["onnx", "profile-max", "profile-opt", "precision", "trt-version", "gpu-name", "compute-capability"],
)
def test_any_key_part_changes_the_key(change):
    assert engine_key(**{**ARGS, **change}) != engine_key(**ARGS)


def test_the_onnx_digest_covers_external_data(tmp_path):
    """An engine's key takes its ONNX files' digest from their manifest records: graph and data."""
    graph, data = tmp_path / "unet.onnx", tmp_path / data_file("unet.onnx")
    entry = ComponentEntry("unet.onnx", "fp16", "k")

    def digest() -> str:
        return entry.recorded(tmp_path).digest()

    graph.write_bytes(b"graph")
    alone = digest()
    data.write_bytes(b"weights")
    with_data = digest()
    data.write_bytes(b"weightz")
    assert len({alone, with_data, digest()}) == 3
    graph.write_bytes(b"graph2")
    assert digest() != with_data


def test_timing_cache_is_per_platform_in_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache(PLATFORM)
    assert path.parent == tmp_path / "svd-trt"
    assert path.name == "timing-trt10.8.0.43-sm9.0-nvidia-h100-80gb-hbm3.cache"
    other = default_timing_cache(dataclasses.replace(PLATFORM, tensorrt_version="10.9.0.34"))
    assert other != path and other.parent == path.parent


COMPONENTS = ("image_encoder", "vae_encoder", "unet", "vae_decoder")


def _write_dir(path, backend: str) -> dict[str, ComponentEntry]:
    path.mkdir()
    entries = {}
    for name in COMPONENTS:
        (path / f"{name}.engine").write_bytes(f"{name} engine".encode())
        entry = ComponentEntry(f"{name}.engine", "fp16", "k1", extra={"profile": PROFILE})
        entries[name] = entry.recorded(path)
    Manifest(backend, "svd", preset("tiny"), entries).save(path)
    return entries


def test_previous_engines_only_from_a_tensorrt_dir(tmp_path):
    assert previous_engines(tmp_path / "missing") == {}
    assert previous_engines(tmp_path) == {}  # no manifest
    _write_dir(tmp_path / "ort", "onnxruntime")
    assert previous_engines(tmp_path / "ort") == {}
    entries = _write_dir(tmp_path / "trt", "tensorrt")
    old = previous_engines(tmp_path / "trt")
    assert set(old) == set(COMPONENTS) and old["unet"].file == entries["unet"].file
    # files are not checked here: each is checked (hashed) when it is considered for reuse
    (tmp_path / "trt" / "unet.engine").unlink()
    assert set(previous_engines(tmp_path / "trt")) == set(COMPONENTS)


def test_reusable_needs_the_same_key_and_intact_files(tmp_path):
    old = _write_dir(tmp_path / "trt", "tensorrt")
    out = tmp_path / "trt"
    assert reusable(out, old, "unet", "k1") is old["unet"]
    assert reusable(out, old, "unet", "k2") is None
    assert reusable(out, old, "missing", "k1") is None
    (out / "vae_decoder.engine").write_bytes(b"vae_decoder ENGINE")  # same size, other bytes
    assert reusable(out, old, "vae_decoder", "k1") is None
    (out / "unet.engine").unlink()
    assert reusable(out, old, "unet", "k1") is None
