"""The TensorRT build (engines/tensorrt_build.py): build_engine's use of Polygraphy's
builder, and the orchestration around it (profiles, cache reuse, int8 / fp8 UNets) with
build_engine faked (tests/trt_fakes.py). The real build and run need TensorRT and a CUDA
GPU and skip without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from trt_fakes import PLATFORM, FakeBuilder

from svd_trt.engines import tensorrt_build
from svd_trt.engines.build import BuildError, BuildOptions
from svd_trt.engines.profiles import component_profiles
from svd_trt.engines.tensorrt_build import build_tensorrt_dir, onnx_dir_for
from svd_trt.engines.trt_cache import BUILDER_VERSION
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.spec import served_limits
from svd_trt.manifest import load_manifest
from svd_trt.runtime import trt_runner
from svd_trt.runtime.runners import open_runner
from svd_trt.runtime.trt_runner import TrtError
from svd_trt.spec import QUANTIZED_PRECISIONS

# --- without TensorRT ---------------------------------------------------------------------------


def test_modules_import_without_tensorrt():
    """In a fresh interpreter where `import tensorrt` fails, even on a machine that has it."""
    code = (
        "import sys; sys.modules['tensorrt'] = None; "
        "import svd_trt.engines.tensorrt_build, svd_trt.runtime.trt_runner, svd_trt.engines.cli"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_engine_reaches_tensorrt_through_polygraphy(no_tensorrt, tmp_path):
    """The real Polygraphy loaders accept our arguments; only the TensorRT import is missing."""
    from polygraphy.exception import PolygraphyException

    profile = {"x": {"min": (1, 3), "opt": (2, 3), "max": (4, 3)}}
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(PolygraphyException, match="tensorrt"):
        tensorrt_build.build_engine(
            tmp_path / "m.onnx", tmp_path / "m.engine", profile, "fp16", tmp_path / "tc"
        )
    assert not (tmp_path / "m.engine").exists()


# --- build_engine: the flags Polygraphy gets ----------------------------------------------------

ALL_PRECISIONS = ("fp32", "fp16", *QUANTIZED_PRECISIONS)
PRECISION_FLAGS = {"fp16", "bf16", "int8", "fp8"}  # CreateConfig's; TensorRT rejects them when strongly typed


def test_build_engine_calls(polygraphy_calls, tmp_path):
    """Profile, strongly typed network, no precision flag, TF32 off, timing cache load (only
    once it exists) and save, checked against the real Polygraphy signatures."""
    calls = polygraphy_calls
    profile = {
        "x": {"min": (1, 3), "opt": (2, 3), "max": (4, 3)},
        "t": {"min": (1,), "opt": (2,), "max": (4,)},
    }
    cache = tmp_path / "timing.cache"
    for precision, cache_exists in (("fp16", False), ("fp32", True), ("int8", True), ("fp8", True)):
        if cache_exists:
            cache.write_bytes(b"cache")
        engine = tmp_path / f"{precision}.engine"
        tensorrt_build.build_engine(tmp_path / "m.onnx", engine, profile, precision, cache)
        assert engine.read_bytes() == b"plan"
        config = calls["CreateConfig"][1]
        # The graph carries the precision (fp16 tensors, fp32 islands, Q/DQ pairs): no builder flag.
        assert not PRECISION_FLAGS & set(config), f"{precision}: {sorted(PRECISION_FLAGS & set(config))}"
        assert config["tf32"] is False  # fp32 tensors stay strict fp32 (TensorRT's default is TF32 on)
        assert config["load_timing_cache"] == (str(cache) if cache_exists else None)
        (trt_profile,) = config["profiles"]
        assert {k: tuple(map(tuple, trt_profile[k])) for k in profile} == {
            k: (v["min"], v["opt"], v["max"]) for k, v in profile.items()
        }
        assert calls["NetworkFromOnnxPath"] == ((str(tmp_path / "m.onnx"),), {"strongly_typed": True})
        args, kwargs = calls["EngineBytesFromNetwork"]
        assert args == ("network",) and kwargs == {"config": "config", "save_timing_cache": str(cache)}


# The builder flags of every BUILDER_VERSION, append-only: a fingerprint of the keyword
# arguments build_engine gives Polygraphy's loaders, per precision. Engines built with other
# flags must not be reused, so changing the flags fails test_builder_version_tracks_the_flags
# until BUILDER_VERSION (engines/trt_cache.py) is bumped and the new fingerprint appended here.
BUILDER_FLAGS = {
    1: "146b737b3fddbdfb",  # CreateConfig(fp16=..., int8=..., fp8=...) by precision
    2: "fa4756a63b6bc686",  # NetworkFromOnnxPath(strongly_typed=True), CreateConfig(tf32=False)
}
PER_BUILD = {"profiles", "load_timing_cache", "save_timing_cache", "config"}  # not flags: vary per build


def build_flags(calls: dict, build, precisions=ALL_PRECISIONS) -> dict:
    """{precision: {loader: keyword arguments}} as build_engine passes them, minus PER_BUILD."""
    flags = {}
    for precision in precisions:
        calls.clear()
        build(precision)
        flags[precision] = {
            loader: {k: v for k, v in kwargs.items() if k not in PER_BUILD}
            for loader, (_, kwargs) in calls.items()
        }
    return flags


def fingerprint(flags: dict) -> str:
    return hashlib.sha256(json.dumps(flags, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def test_builder_version_tracks_the_flags(polygraphy_calls, tmp_path):
    profile = {"x": {"min": (1,), "opt": (1,), "max": (1,)}}

    def build(precision):
        tensorrt_build.build_engine(
            tmp_path / "m.onnx", tmp_path / "m.engine", profile, precision, tmp_path / "t"
        )

    flags = build_flags(polygraphy_calls, build)
    assert list(BUILDER_FLAGS) == list(range(1, BUILDER_VERSION + 1)), "one fingerprint per version"
    assert len(set(BUILDER_FLAGS.values())) == len(BUILDER_FLAGS), "each version has its own flags"
    assert fingerprint(flags) == BUILDER_FLAGS[BUILDER_VERSION], (
        f"build_engine's flags changed: bump BUILDER_VERSION in engines/trt_cache.py and append "
        f"{fingerprint(flags)!r} to BUILDER_FLAGS; flags now {flags}"
    )


def test_the_fingerprint_sees_a_flag_change(polygraphy_calls, tmp_path):
    """The guard above is not blind: one changed keyword changes the fingerprint."""

    def build(precision, **extra):
        from polygraphy.backend.trt import CreateConfig

        CreateConfig(tf32=False, profiles=[], **extra)

    base = fingerprint(build_flags(polygraphy_calls, build))
    for change in ({"fp16": True}, {"builder_optimization_level": 5}):
        changed = fingerprint(build_flags(polygraphy_calls, lambda p, change=change: build(p, **change)))
        assert changed != base, change


# --- orchestration: build_tensorrt_dir with a fake builder ---------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"))


@pytest.fixture(scope="module")
def shared_onnx(tmp_path_factory):
    """One ONNX directory for every build of this module; build_onnx_dir reuses it by key."""
    return tmp_path_factory.mktemp("onnx") / "engines-onnx"


SMALL_REQUEST = dict(num_frames=(2, 6), height=(64, 128), width=(64, 128))


def _build(ckpt, out, onnx, request=SMALL_REQUEST, **kwargs):
    statuses = {}
    options = BuildOptions("tensorrt", request, onnx_dir=onnx, timing_cache=out.parent / "timing.cache", **kwargs)
    manifest = build_tensorrt_dir(ckpt, out, options, on_component=lambda n, s, t: statuses.__setitem__(n, s))
    return manifest, statuses


def test_build_writes_engines_and_manifest(tiny_ckpt, shared_onnx, tmp_path, fake_build):
    builder = fake_build()
    out = tmp_path / "engines"
    manifest, statuses = _build(tiny_ckpt, out, shared_onnx)
    cfg = preset("tiny")
    profiles = component_profiles(SVD, cfg, served_limits(cfg, SMALL_REQUEST, bounded=True))
    assert sorted(b[0] for b in builder.built) == sorted(profiles)
    assert all(cache == tmp_path / "timing.cache" for *_, cache in builder.built)
    assert {n: s for n, s in statuses.items() if not n.endswith("onnx")} == dict.fromkeys(profiles, "built")
    loaded = load_manifest(out)
    assert loaded.backend == "tensorrt" and loaded.model == cfg
    assert {n: e.precision for n, e in loaded.components.items()} == {
        "image_encoder": "fp16",
        "vae_encoder": "fp32",
        "unet": "fp16",
        "vae_decoder": "fp32",
    }
    for name, entry in loaded.components.items():
        assert entry.file == f"{name}.engine"
        assert json.loads((out / entry.file).read_text())["profile"] == entry.extra["profile"]
        assert entry.extra["profile"] == json.loads(json.dumps(profiles[name]))
        assert entry.extra["platform"] == dataclasses.asdict(PLATFORM)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f"{n}.engine" for n in profiles), "manifest.json"]
    )
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    # The ONNX beside: GPU precisions, the timestep input fp32 in the fp16 UNet graph.
    onnx = load_manifest(shared_onnx)
    assert onnx.components["unet"].precision == "fp16" and onnx.components["vae_decoder"].precision == "fp32"
    assert onnx.components["unet"].inputs["timestep"]["dtype"] == "float32"
    assert manifest.to_json() == loaded.to_json()


def test_second_build_reuses_and_a_changed_profile_rebuilds(tiny_ckpt, shared_onnx, tmp_path, fake_build):
    out = tmp_path / "engines"
    first = fake_build()
    _build(tiny_ckpt, out, shared_onnx)
    assert len(first.built) == 4
    again = fake_build()
    _, statuses = _build(tiny_ckpt, out, shared_onnx)
    assert again.built == [] and {statuses[n] for n in ("unet", "vae_decoder")} == {"reused"}
    # More frames: only the components with a frame axis change.
    more = fake_build()
    _build(tiny_ckpt, out, shared_onnx, {**SMALL_REQUEST, "num_frames": (2, 8)})
    assert sorted(b[0] for b in more.built) == ["unet", "vae_decoder"]
    assert load_manifest(out).components["unet"].extra["profile"]["sample"]["max"][1] == 8
    # Another TensorRT: every engine is stale and rebuilt, never reused.
    upgraded = fake_build(platform=dataclasses.replace(PLATFORM, tensorrt_version="10.9.0.34"))
    _build(tiny_ckpt, out, shared_onnx, {**SMALL_REQUEST, "num_frames": (2, 8)})
    assert len(upgraded.built) == 4


def test_failed_build_leaves_the_old_directory(tiny_ckpt, shared_onnx, tmp_path, fake_build):
    out = tmp_path / "engines"
    fake_build()
    _build(tiny_ckpt, out, shared_onnx)
    before = (out / "manifest.json").read_text()
    fake_build(FakeBuilder(fail_on="unet"))
    with pytest.raises(RuntimeError, match="builder failed"):
        _build(tiny_ckpt, out, shared_onnx, {**SMALL_REQUEST, "num_frames": (2, 8)})
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_precision_override_and_bad_precisions(tiny_ckpt, shared_onnx, tmp_path, fake_build):
    builder = fake_build()
    manifest, _ = _build(tiny_ckpt, tmp_path / "e", shared_onnx, precisions={"vae_decoder": "fp16"})
    assert manifest.components["vae_decoder"].precision == "fp16"
    assert ("vae_decoder", "fp16", tmp_path / "timing.cache") in builder.built
    bad_cases = (
        ({"vae_decoder": "int8"}, "fp32 or fp16"),
        ({"clip": "fp16"}, "unknown component"),
        ({"unet": "int8"}, "needs --calibration DIR"),
    )
    for bad, words in bad_cases:
        with pytest.raises(BuildError, match=words):
            _build(tiny_ckpt, tmp_path / "e", shared_onnx, precisions=bad)


@pytest.fixture(scope="module")
def tiny_calibration(tiny_ckpt, tmp_path_factory):
    """UNet inputs recorded from fp32 ONNX Runtime engines of the same tiny checkpoint."""
    from svd_trt.calibration.capture import capture_calibration
    from svd_trt.export.onnx_export import build_onnx_dir
    from svd_trt.families.svd.options import GenerationOptions

    root = tmp_path_factory.mktemp("calib")
    build_onnx_dir(tiny_ckpt, root / "engines")
    options = GenerationOptions(num_frames=2, height=32, width=32, num_inference_steps=2, seed=0)
    capture_calibration(root / "engines", None, root / "calib", options, runs=2, threads=2)
    return root / "calib"


def test_int8_unet_is_built_from_its_qdq_onnx(tiny_ckpt, tiny_calibration, tmp_path, fake_build):
    builder = fake_build()
    onnx = tmp_path / "onnx"
    manifest, statuses = _build(
        tiny_ckpt, tmp_path / "e", onnx, precisions={"unet": "int8"}, calibration=tiny_calibration
    )
    assert ("unet.int8", "int8", tmp_path / "timing.cache") in builder.built
    assert manifest.components["unet"].precision == "int8" and statuses["unet int8 q/dq"] == "quantized"
    ops = [n.op_type for n in __import__("onnx").load(str(onnx / "unet.int8.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 10
    # The float export stays reusable: a second build re-quantizes but does not re-export.
    _, again = _build(
        tiny_ckpt, tmp_path / "e", onnx, precisions={"unet": "int8"}, calibration=tiny_calibration
    )
    assert again["unet onnx"] == "reused" and again["unet"] == "reused"


def test_fp8_unet_needs_ada_or_hopper(tiny_ckpt, tiny_calibration, tmp_path, fake_build):
    fake_build(platform=dataclasses.replace(PLATFORM, gpu="NVIDIA A100", compute_capability="8.0"))
    with pytest.raises(BuildError, match="fp8 needs TensorRT on a GPU of compute capability >= 8.9"):
        _build(
            tiny_ckpt,
            tmp_path / "e",
            tmp_path / "onnx",
            precisions={"unet": "fp8"},
            calibration=tiny_calibration,
        )
    assert not (tmp_path / "onnx").exists()


def test_fp8_unet_on_hopper_gets_an_fp8_qdq_graph(tiny_ckpt, tiny_calibration, tmp_path, fake_build):
    import onnx

    builder = fake_build()
    out = tmp_path / "onnx"
    _build(tiny_ckpt, tmp_path / "e", out, precisions={"unet": "fp8"}, calibration=tiny_calibration)
    assert ("unet.fp8", "fp8", tmp_path / "timing.cache") in builder.built
    graph = onnx.load(str(out / "unet.fp8.onnx")).graph
    init = {t.name: t for t in graph.initializer}
    zero_points = [init[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and {z.data_type for z in zero_points} == {onnx.TensorProto.FLOAT8E4M3FN}


def test_range_and_tensorrt_errors_come_before_any_export(tiny_ckpt, tmp_path, no_tensorrt):
    onnx = tmp_path / "onnx"
    with pytest.raises(ValueError, match="--height 64:102: this model needs multiples of 8"):
        _build(tiny_ckpt, tmp_path / "e", onnx, {**SMALL_REQUEST, "height": (64, 102)})
    with pytest.raises(TrtError, match="TensorRT is not installed"):
        _build(tiny_ckpt, tmp_path / "e", onnx)
    assert not onnx.exists() and not (tmp_path / "e").exists()


def test_default_onnx_dir_is_beside_the_engine_dir(tmp_path):
    assert onnx_dir_for(tmp_path / "engines-xt") == tmp_path / "engines-xt-onnx"


# --- the real thing: TensorRT and a CUDA GPU ----------------------------------------------------


def _gpu() -> bool:
    try:
        trt_runner.gpu_identity()
    except TrtError:
        return False
    return True


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_build_runs_and_matches_onnxruntime(tiny_ckpt, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    if not _gpu():
        pytest.skip("no CUDA GPU")
    from svd_trt.export.onnx_export import build_onnx_dir
    from svd_trt.families.svd.spec import sizes_for
    from svd_trt.runtime.runners import OrtRunner

    out = tmp_path / "engines"
    options = BuildOptions("tensorrt", SMALL_REQUEST, timing_cache=tmp_path / "timing.cache")
    manifest = build_tensorrt_dir(tiny_ckpt, out, options)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    ref_dir = tmp_path / "ort"
    build_onnx_dir(tiny_ckpt, ref_dir)  # fp32 reference graphs
    cfg = manifest.model
    for name, entry in manifest.components.items():
        spec = manifest.specs()[name]
        runner = open_runner(out, name, entry, "tensorrt")
        for sizes in (sizes_for(cfg, 1, 2, 64, 64), sizes_for(cfg, 2, 6, 128, 96)):
            if name == "vae_decoder":
                sizes["F"] = min(sizes["F"], 6)
            inputs = spec.sample_inputs(sizes, np.random.default_rng(0))
            ours = runner.run(inputs)[spec.output_names[0]].astype(np.float64)
            ref = OrtRunner(ref_dir / spec.onnx_file).run(inputs)[spec.output_names[0]]
            err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30)
            assert err < (2e-2 if entry.precision == "fp16" else 1e-3), f"{name} {sizes}: rel err {err:.2e}"
        runner.close()
    # Second build reuses every engine.
    statuses = {}
    build_tensorrt_dir(tiny_ckpt, out, options, on_component=lambda n, s, t: statuses.__setitem__(n, s))
    assert [statuses[n] for n in manifest.components] == ["reused"] * 4
