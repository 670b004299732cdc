"""The TensorRT path: everything around TensorRT runs here with fakes; the real build and run
need TensorRT and a CUDA GPU and skip without them.

Fakes stand in for exactly two seams: `tensorrt_build.build_engine` (the one function that
calls Polygraphy's builder) with `current_platform`, and the engine / CUDA objects that
`EngineSession` drives. They check our orchestration and our use of those APIs, not TensorRT.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from svd_trt.config import preset
from svd_trt.engines import tensorrt_build
from svd_trt.engines.build import BuildError, BuildOptions
from svd_trt.engines.profiles import ProfileRequest, component_profiles, served_limits
from svd_trt.engines.tensorrt_build import build_tensorrt_dir, onnx_dir_for
from svd_trt.manifest import ComponentEntry, Manifest, load_manifest
from svd_trt.runtime import trt_runner
from svd_trt.runtime.runners import open_runner
from svd_trt.runtime.trt_runner import (
    INSTALL_HINT,
    Platform,
    ProfileError,
    TrtEngineRunner,
    TrtError,
    platform_mismatch,
    recorded_platform,
    shape_error,
)

PLATFORM = Platform("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def no_tensorrt(monkeypatch):
    """`import tensorrt` fails, as on our machines (a None entry makes import raise ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --- without TensorRT ---------------------------------------------------------------------------


def test_modules_import_without_tensorrt():
    """In a fresh interpreter where `import tensorrt` fails, even on a machine that has it."""
    code = (
        "import sys; sys.modules['tensorrt'] = None; "
        "import svd_trt.engines.tensorrt_build, svd_trt.runtime.trt_runner, svd_trt.engines.cli"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_side_does_not_import_torch():
    code = "import sys; import svd_trt.runtime.trt_runner, svd_trt.runtime.runners; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_tensorrt_is_one_line_with_the_install_command(no_tensorrt):
    with pytest.raises(TrtError) as e:
        trt_runner.current_platform()
    assert str(e.value) == INSTALL_HINT
    assert "TensorRT is not installed" in INSTALL_HINT and "pip install 'svd-trt[tensorrt]'" in INSTALL_HINT
    assert "pypi.nvidia.com" in INSTALL_HINT and "\n" not in INSTALL_HINT


def test_missing_polygraphy_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    with pytest.raises(TrtError, match=r"^Polygraphy is not installed .*pip install 'polygraphy>=0.49'$"):
        trt_runner.tensorrt_version()


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


def test_build_engine_calls(monkeypatch, tmp_path):
    """Profile, fp16 flag, timing cache load (only once it exists) and save, checked against
    the real Polygraphy signatures."""
    import polygraphy.backend.trt as ptrt

    calls = {}

    def recorder(real, result):
        def fake(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)  # a TypeError here = we misuse the API
            calls[real.__name__] = (args, kwargs)
            return result

        return fake

    monkeypatch.setattr(ptrt, "CreateConfig", recorder(ptrt.CreateConfig, "config"))
    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", recorder(ptrt.NetworkFromOnnxPath, "network"))
    monkeypatch.setattr(
        ptrt, "EngineBytesFromNetwork", recorder(ptrt.EngineBytesFromNetwork, lambda: b"plan")
    )
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
        # Q/DQ networks: the int8 / fp8 flag honours the pairs, fp16 runs the float remainder.
        assert config["fp16"] is (precision != "fp32")
        assert config["int8"] is (precision == "int8") and config["fp8"] is (precision == "fp8")
        assert config["load_timing_cache"] == (str(cache) if cache_exists else None)
        (trt_profile,) = config["profiles"]
        assert {k: tuple(map(tuple, trt_profile[k])) for k in profile} == {
            k: (v["min"], v["opt"], v["max"]) for k, v in profile.items()
        }
        assert calls["NetworkFromOnnxPath"][0] == (str(tmp_path / "m.onnx"),)
        args, kwargs = calls["EngineBytesFromNetwork"]
        assert args == ("network",) and kwargs == {"config": "config", "save_timing_cache": str(cache)}


# --- engine identity: TensorRT version and GPU --------------------------------------------------


def test_platform_mismatch():
    assert platform_mismatch(PLATFORM, PLATFORM) is None
    newer = dataclasses.replace(PLATFORM, tensorrt_version="10.9.0.34")
    assert (
        platform_mismatch(PLATFORM, newer)
        == "built with TensorRT 10.8.0.43 but TensorRT 10.9.0.34 is installed"
    )
    a100 = Platform(PLATFORM.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0")
    assert platform_mismatch(PLATFORM, a100) == (
        "built for NVIDIA H100 80GB HBM3 (compute capability 9.0) "
        "but this GPU is NVIDIA A100-SXM4-80GB (compute capability 8.0)"
    )
    # Same architecture, other board: tactics were timed on the other one; refuse too.
    assert platform_mismatch(PLATFORM, dataclasses.replace(PLATFORM, gpu="NVIDIA H100 PCIe"))
    assert platform_mismatch(PLATFORM, dataclasses.replace(PLATFORM, compute_capability="9.1"))


def test_entry_without_build_record_is_refused():
    for entry in (None, ComponentEntry("unet.onnx", "fp16", "k")):
        with pytest.raises(TrtError, match="no TensorRT build record"):
            recorded_platform("e/unet.onnx", entry)
    entry = ComponentEntry("unet.engine", "fp16", "k", extra={"platform": dataclasses.asdict(PLATFORM)})
    assert recorded_platform("e/unet.engine", entry) == PLATFORM


# --- requests against the profile ---------------------------------------------------------------

UNET_DIMS = {"sample": ["B", "F", 8, "h", "w"], "timestep": ["B"]}
UNET_PROFILE = {
    "sample": {"min": [1, 4, 8, 32, 64], "opt": [2, 8, 8, 72, 128], "max": [2, 12, 8, 72, 128]},
    "timestep": {"min": [1], "opt": [2], "max": [2]},
}


def _unet(shape=(2, 8, 8, 72, 128), batch=2):
    return {"sample": shape, "timestep": (batch,)}


def test_shapes_inside_the_profile_pass():
    for shape in ((1, 4, 8, 32, 64), (2, 12, 8, 72, 128), (2, 5, 8, 40, 100)):
        assert shape_error("unet", UNET_DIMS, UNET_PROFILE, _unet(shape, shape[0])) is None


@pytest.mark.parametrize(
    "component, shapes, message",
    [
        (
            "unet",
            _unet((2, 25, 8, 72, 128)),
            "unet: sample dim F (frames) = 25 is outside the engine's profile 4..12; "
            "rebuild the engines with a --num-frames range that covers it",
        ),
        (
            "unet",
            _unet((2, 8, 8, 80, 128)),
            "unet: sample dim h (latent height) = 80 is outside the engine's profile 32..72; "
            "rebuild the engines with a --height range that covers it",
        ),
        (
            "unet",
            _unet((3, 8, 8, 72, 128), 3),
            "unet: sample dim B (batch) = 3 is outside the engine's profile 1..2",
        ),
        ("unet", _unet((2, 8, 4, 72, 128)), "unet: sample axis 2 = 4 is outside the engine's profile 8..8"),
        (
            "unet",
            _unet((2, 8, 72, 128)),
            "unet: sample has 4 dims, the engine takes 5 (['B', 'F', 8, 'h', 'w'])",
        ),
        ("unet", {"sample": (2, 8, 8, 72, 128)}, "unet: inputs ['sample'] do not match the engine's"),
        (
            "vae_decoder",
            {"sample": (2, 25, 8, 72, 128), "timestep": (2,)},
            "vae_decoder: sample dim F (frames) = 25 is outside the engine's profile 4..12; "
            "rebuild the engines with a --decode-chunk-size range that covers it",
        ),
    ],
    ids=["frames", "latent-height", "batch", "fixed-dim", "rank", "missing-input", "decoder-chunk"],
)
def test_shapes_outside_the_profile_name_dim_and_range(component, shapes, message):
    error = shape_error(component, UNET_DIMS, UNET_PROFILE, shapes)
    assert error.startswith(message) and "\n" not in error


# --- the runner, around fake engine and CUDA objects ---------------------------------------------

MEMORY: dict[int, np.ndarray] = {}


class FakeDeviceArray:
    """polygraphy.cuda.DeviceArray over host memory; `ptr` keys MEMORY."""

    allocated: list[FakeDeviceArray] = []

    def __init__(self, shape, dtype):
        self.mem = np.zeros(shape, dtype)
        self.ptr = 0x1000 * (len(MEMORY) + 1)
        MEMORY[self.ptr] = self.mem
        FakeDeviceArray.allocated.append(self)

    def copy_from(self, host, stream=None):
        assert host.dtype == self.mem.dtype and host.flags.c_contiguous and host.size <= self.mem.size
        self.mem[: host.size] = host.reshape(-1)

    def view(self, shape):
        return FakeView(self.mem[: int(np.prod(shape))])

    def free(self):
        MEMORY.pop(self.ptr, None)


class FakeView:
    def __init__(self, mem):
        self.mem = mem

    def copy_to(self, host, stream=None):
        assert host.dtype == self.mem.dtype and host.size == self.mem.size
        host.reshape(-1)[:] = self.mem


class FakeStream:
    ptr = 7

    def synchronize(self):
        pass

    def free(self):
        pass


class FakeContext:
    """y = x * t[:, None] for x [N, 3] fp16, t [N] fp32 (a pinned-fp32 input, like the timestep)."""

    def __init__(self):
        self.shapes = {"x": (-1, 3), "t": (-1,)}
        self.addresses, self.shape_sets = {}, 0

    def get_tensor_shape(self, name):
        return self.shapes["x"] if name == "y" else self.shapes[name]

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        self.shape_sets += 1
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        n = self.shapes["x"][0]
        x = MEMORY[self.addresses["x"]][: n * 3].reshape(n, 3)
        t = MEMORY[self.addresses["t"]][:n]
        MEMORY[self.addresses["y"]][: n * 3] = (x * t[:, None]).reshape(-1)
        return True


class FakeEngine:
    names = ["x", "t", "y"]
    dtypes = {"x": np.float16, "t": np.float32, "y": np.float16}
    num_io_tensors = 3

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "output" if name == "y" else "input"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        self.context = FakeContext()
        return self.context


FAKE_DIMS = {"x": {"dims": ["B", 3], "dtype": "float16"}, "t": {"dims": ["B"], "dtype": "float32"}}
FAKE_PROFILE = {"x": {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}, "t": {"min": [1], "opt": [2], "max": [4]}}


@pytest.fixture
def fake_trt(monkeypatch):
    """Fake `tensorrt` and Polygraphy CUDA objects; the engine loader returns a FakeEngine."""
    import polygraphy.cuda

    trt = types.ModuleType("tensorrt")
    trt.__version__ = PLATFORM.tensorrt_version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(polygraphy.cuda, "DeviceArray", FakeDeviceArray)
    monkeypatch.setattr(polygraphy.cuda, "Stream", FakeStream)
    monkeypatch.setattr(trt_runner, "current_platform", lambda: PLATFORM)
    loaded = []
    monkeypatch.setattr(trt_runner, "load_engine", lambda path: loaded.append(path) or FakeEngine())
    FakeDeviceArray.allocated = []
    return loaded


def _entry(platform=PLATFORM):
    extra = {"profile": FAKE_PROFILE, "platform": dataclasses.asdict(platform)}
    return ComponentEntry("fake.engine", "fp16", "k", inputs=FAKE_DIMS, extra=extra)


def test_session_reuses_buffers_casts_inputs_and_returns_fresh_arrays(fake_trt, tmp_path):
    runner = open_runner(tmp_path, "fake", _entry(), "tensorrt")
    assert isinstance(runner, TrtEngineRunner) and fake_trt == [tmp_path / "fake.engine"]
    session = runner.session
    assert [a.mem.size for a in FakeDeviceArray.allocated] == [12, 4, 12]  # max shapes, once
    addresses = dict(session.context.addresses)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((1, 3))  # float64 in: cast to fp16
    first = runner.run({"x": x1, "t": np.arange(1, 5)})
    second = runner.run({"x": x2, "t": np.array([0.5])})
    assert first["y"].dtype == np.float16 and first["y"].shape == (4, 3) and second["y"].shape == (1, 3)
    t1 = np.arange(1, 5, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(first["y"], (x1.astype(np.float16) * t1).astype(np.float16))
    np.testing.assert_array_equal(second["y"], (x2.astype(np.float16) * np.float32(0.5)).astype(np.float16))
    assert len(FakeDeviceArray.allocated) == 3 and session.context.addresses == addresses
    shape_sets = session.context.shape_sets
    runner.run({"x": x2, "t": np.array([0.5])})
    assert session.context.shape_sets == shape_sets  # unchanged shapes are not set again
    runner.close()


def test_runner_refuses_requests_outside_the_profile(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=_entry())
    with pytest.raises(
        ProfileError, match=r"fake: x dim B \(batch\) = 5 is outside the engine's profile 1..4"
    ):
        runner.run({"x": np.zeros((5, 3)), "t": np.zeros(5)})


def test_runner_refuses_a_foreign_engine_before_loading_it(fake_trt, tmp_path):
    other = dataclasses.replace(PLATFORM, tensorrt_version="10.3.0.26")
    with pytest.raises(TrtError) as e:
        TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=_entry(other))
    assert "engine built with TensorRT 10.3.0.26 but TensorRT 10.8.0.43 is installed" in str(e.value)
    assert "rebuild on this machine with svd-export build-engines --backend tensorrt" in str(e.value)
    assert fake_trt == []  # never deserialized


# --- manifest -----------------------------------------------------------------------------------


def test_manifest_round_trip_with_profile_and_platform(tmp_path):
    cfg = preset("tiny")
    profiles = component_profiles(
        cfg, served_limits(cfg, ProfileRequest(num_frames=(2, 6), height=(64, 128), width=(64, 128)), True)
    )
    specs = Manifest("tensorrt", cfg, {}).specs()
    entries = {}
    for name, spec in specs.items():
        (tmp_path / f"{name}.engine").write_bytes(b"plan")
        extra = {"profile": profiles[name], "platform": dataclasses.asdict(PLATFORM), "onnx_sha256": "ab"}
        entries[name] = ComponentEntry.describe(spec, f"{name}.engine", spec.precision_on("tensorrt"), "k", **extra)
    Manifest("tensorrt", cfg, entries).save(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded.backend == "tensorrt" and loaded.model == cfg
    for name, entry in loaded.components.items():
        assert json.loads(json.dumps(entries[name].extra)) == entry.extra
        assert recorded_platform(tmp_path / entry.file, entry) == PLATFORM
    unet = loaded.components["unet"]
    assert unet.extra["profile"]["sample"]["max"] == [2, 6, 8, 64, 64]
    # fp16 engine, but the timestep stays fp32 (the spec pins it).
    assert unet.inputs["sample"]["dtype"] == "float16" and unet.inputs["timestep"]["dtype"] == "float32"


# --- orchestration: build_tensorrt_dir with a fake builder ---------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from svd_trt.export.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset("tiny"))


@pytest.fixture(scope="module")
def shared_onnx(tmp_path_factory):
    """One ONNX directory for every build of this module; build_onnx_dir reuses it by key."""
    return tmp_path_factory.mktemp("onnx") / "engines-onnx"


class FakeBuilder:
    """Stands in for build_engine: writes the profile as the 'engine' and counts builds."""

    def __init__(self, fail_on: str | None = None):
        self.built, self.fail_on = [], fail_on

    def __call__(self, onnx_path, engine_path, profile, precision, timing_cache):
        assert onnx_path.exists() and engine_path.parent.name.startswith(".")  # into the stage dir
        if onnx_path.stem == self.fail_on:
            raise RuntimeError("builder failed")
        self.built.append((onnx_path.stem, precision, timing_cache))
        engine_path.write_text(json.dumps({"profile": profile, "precision": precision}))


@pytest.fixture
def fake_build(monkeypatch):
    def install(builder=None, platform=PLATFORM):
        builder = builder or FakeBuilder()
        monkeypatch.setattr(tensorrt_build, "build_engine", builder)
        monkeypatch.setattr(tensorrt_build, "current_platform", lambda: platform)
        return builder

    return install


SMALL_REQUEST = ProfileRequest(num_frames=(2, 6), height=(64, 128), width=(64, 128))


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
    profiles = component_profiles(cfg, served_limits(cfg, SMALL_REQUEST, bounded=True))
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
    _build(tiny_ckpt, out, shared_onnx, dataclasses.replace(SMALL_REQUEST, num_frames=(2, 8)))
    assert sorted(b[0] for b in more.built) == ["unet", "vae_decoder"]
    assert load_manifest(out).components["unet"].extra["profile"]["sample"]["max"][1] == 8
    # Another TensorRT: every engine is stale and rebuilt, never reused.
    upgraded = fake_build(platform=dataclasses.replace(PLATFORM, tensorrt_version="10.9.0.34"))
    _build(tiny_ckpt, out, shared_onnx, dataclasses.replace(SMALL_REQUEST, num_frames=(2, 8)))
    assert len(upgraded.built) == 4


def test_failed_build_leaves_the_old_directory(tiny_ckpt, shared_onnx, tmp_path, fake_build):
    out = tmp_path / "engines"
    fake_build()
    _build(tiny_ckpt, out, shared_onnx)
    before = (out / "manifest.json").read_text()
    fake_build(FakeBuilder(fail_on="unet"))
    with pytest.raises(RuntimeError, match="builder failed"):
        _build(tiny_ckpt, out, shared_onnx, dataclasses.replace(SMALL_REQUEST, num_frames=(2, 8)))
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
    from svd_trt.options import GenerationOptions

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
    with pytest.raises(BuildError, match="fp8 needs compute capability >= 8.9"):
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
        _build(tiny_ckpt, tmp_path / "e", onnx, dataclasses.replace(SMALL_REQUEST, height=(64, 102)))
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
    from svd_trt.runtime.runners import OrtRunner
    from svd_trt.spec import sizes_for

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
