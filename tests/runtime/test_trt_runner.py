"""The TensorRT runtime (runtime/trt_runner.py): platform checks, profile checks, the engine
session and runner on fake TensorRT and CUDA objects (tests/trt_fakes.py), and the GPU
identity on a fake CUDA driver. The real engine run is in tests/engines/test_tensorrt_build.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import types
import weakref

import numpy as np
import pytest
from trt_fakes import (
    PLATFORM,
    POISON,
    FakeCuda,
    FakeCudaError,
    FakeDeviceArray,
    FakeDeviceView,
    FakeLibcuda,
    FakeStream,
    fake_entry,
)

from svd_trt.engines.profiles import component_profiles
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.spec import served_limits
from svd_trt.manifest import ComponentEntry, Manifest, load_manifest
from svd_trt.runtime import trt_runner
from svd_trt.runtime.runners import open_runner
from svd_trt.runtime.trt_runner import (
    INSTALL_HINT,
    EngineSession,
    Platform,
    ProfileError,
    TrtEngineRunner,
    TrtError,
    platform_mismatch,
    recorded_platform,
    shape_error,
)

# --- without TensorRT ---------------------------------------------------------------------------


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


# --- the GPU's identity, from the CUDA driver ----------------------------------------------------


def test_gpu_identity_reads_name_and_compute_capability(monkeypatch):
    lib = FakeLibcuda()
    monkeypatch.setattr(trt_runner, "_libcuda", lambda: lib)
    assert trt_runner.gpu_identity() == ("NVIDIA H100 80GB HBM3", "9.0")
    assert lib.calls == [
        "cuInit",
        "cuDeviceGet",
        "cuDeviceGetName",
        "cuDeviceGetAttribute:75",
        "cuDeviceGetAttribute:76",
    ]


@pytest.mark.parametrize(
    "call, code, message",
    [
        ("cuInit", 100, "cuInit returned CUresult 100 (CUDA_ERROR_NO_DEVICE)"),
        ("cuDeviceGet", 101, "cuDeviceGet(device 0) returned CUresult 101 (CUDA_ERROR_INVALID_DEVICE)"),
        ("cuDeviceGetName", 1, "cuDeviceGetName returned CUresult 1 (CUDA_ERROR_INVALID_VALUE)"),
        (
            "cuDeviceGetAttribute:75",
            1,
            "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR) returned CUresult 1 (CUDA_ERROR_INVALID_VALUE)",
        ),
        (
            "cuDeviceGetAttribute:76",
            999,
            "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR) returned CUresult 999 (unknown CUresult)",
        ),
    ],
    ids=["init", "device", "name", "major", "minor-unknown-code"],
)
def test_every_failed_driver_call_is_one_line_naming_call_and_code(monkeypatch, call, code, message):
    """Unchecked, a failed cuDeviceGetName or cuDeviceGetAttribute left '' and 0.0 as the GPU."""
    lib = FakeLibcuda(fail={call: code})
    monkeypatch.setattr(trt_runner, "_libcuda", lambda: lib)
    with pytest.raises(TrtError) as e:
        trt_runner.gpu_identity()
    assert str(e.value) == f"no usable CUDA GPU: {message}"
    assert lib.calls[-1] == call  # nothing after the failed call


def test_no_driver_is_one_line(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(trt_runner.ctypes, "CDLL", missing)
    with pytest.raises(TrtError, match=r"^no CUDA GPU: the NVIDIA driver \(libcuda\) is not installed$"):
        trt_runner.gpu_identity()


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


def test_manifest_round_trip_with_profile_and_platform(tmp_path):
    cfg = preset("tiny")
    profiles = component_profiles(SVD, cfg, served_limits(cfg, dict(num_frames=(2, 6), height=(64, 128), width=(64, 128)), True)
    )
    specs = Manifest("tensorrt", "svd", cfg, {}).specs()
    entries = {}
    for name, spec in specs.items():
        (tmp_path / f"{name}.engine").write_bytes(b"plan")
        extra = {"profile": profiles[name], "platform": dataclasses.asdict(PLATFORM), "onnx_digest": "ab"}
        entries[name] = ComponentEntry.describe(spec, f"{name}.engine", spec.precision_on("tensorrt"), "k", **extra)
    Manifest("tensorrt", "svd", cfg, entries).save(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded.backend == "tensorrt" and loaded.model == cfg
    for name, entry in loaded.components.items():
        assert json.loads(json.dumps(entries[name].extra)) == entry.extra
        assert recorded_platform(tmp_path / entry.file, entry) == PLATFORM
    unet = loaded.components["unet"]
    assert unet.extra["profile"]["sample"]["max"] == [2, 6, 8, 64, 64]
    # fp16 engine, but the timestep stays fp32 (the spec pins it).
    assert unet.inputs["sample"]["dtype"] == "float16" and unet.inputs["timestep"]["dtype"] == "float32"


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


# --- the fakes are asynchronous like CUDA, with Polygraphy's signatures -------------------------


def test_fakes_have_polygraphys_cuda_signatures():
    import polygraphy.cuda as real

    pairs = [
        (FakeDeviceArray, real.DeviceArray, ("__init__", "copy_from", "view", "free")),
        (FakeDeviceView, real.DeviceView, ("__init__", "copy_to")),
        (FakeStream, real.Stream, ("__init__", "synchronize", "free")),
    ]
    for fake, cls, methods in pairs:
        for method in methods:
            assert inspect.signature(getattr(fake, method)) == inspect.signature(getattr(cls, method)), (
                f"{cls.__name__}.{method}"
            )


def test_fake_cuda_runs_work_only_at_synchronize_and_only_on_a_live_stream():
    """What makes the session tests able to fail: unsynchronized results are POISON."""
    cuda = FakeCuda()
    stream, buf = cuda.Stream(), cuda.DeviceArray(shape=(3,), dtype=np.float32)
    buf.copy_from(np.array([1.0, 2.0, 3.0], np.float32), stream)
    out = np.zeros(3, np.float32)
    buf.view((3,)).copy_to(out, stream)
    assert cuda.pending() == 2 and np.isnan(out).all()  # all-ones bytes: NaN
    assert (out.view(np.uint8) == POISON).all()
    stream.synchronize()
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])
    assert cuda.pending() == 0
    for handle, words in ((None, "no stream given"), (types.SimpleNamespace(ptr=0), "legacy default stream")):
        with pytest.raises(FakeCudaError, match=words):
            buf.copy_from(out, handle)
    buf.copy_from(out, stream)
    with pytest.raises(FakeCudaError, match="1 operations still queued"):
        cuda.DeviceArray(shape=(1,), dtype=np.float32).free()
    stream.synchronize()
    other = cuda.Stream()
    other.free()
    with pytest.raises(FakeCudaError, match="unknown or destroyed"):
        buf.view((3,)).copy_to(out, other)
    with pytest.raises(FakeCudaError, match="already destroyed"):
        other.free()


# --- the session and runner, around fake engine and CUDA objects --------------------------------


def test_session_reuses_buffers_casts_inputs_and_returns_fresh_arrays(fake_trt, tmp_path):
    runner = open_runner(tmp_path, "fake", fake_entry(), "tensorrt")
    assert isinstance(runner, TrtEngineRunner) and fake_trt.loaded == [tmp_path / "fake.engine"]
    session = runner.session
    assert fake_trt.cuda.allocations == [12, 4, 12]  # max shapes, once
    addresses = dict(session.context.addresses)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((1, 3))  # float64 in: cast to fp16
    first = runner.run({"x": x1, "t": np.arange(1, 5)})
    second = runner.run({"x": x2, "t": np.array([0.5])})
    assert first["y"].dtype == np.float16 and first["y"].shape == (4, 3) and second["y"].shape == (1, 3)
    t1 = np.arange(1, 5, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(first["y"], (x1.astype(np.float16) * t1).astype(np.float16))
    np.testing.assert_array_equal(second["y"], (x2.astype(np.float16) * np.float32(0.5)).astype(np.float16))
    assert len(fake_trt.cuda.allocations) == 3 and session.context.addresses == addresses
    shape_sets = session.context.shape_sets
    runner.run({"x": x2, "t": np.array([0.5])})
    assert session.context.shape_sets == shape_sets  # unchanged shapes are not set again
    runner.close()


def test_run_returns_after_its_stream_drained(fake_trt, tmp_path):
    """Without the synchronize at the end of run, `y` would be returned still POISON (NaN)."""
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry())
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]])
    y = runner.run({"x": x, "t": np.array([2.0, -1.0])})["y"]
    assert fake_trt.cuda.pending() == 0
    np.testing.assert_array_equal(y, np.array([[2.0, -4.0, 6.0], [-0.5, -0.25, 4.0]], np.float16))
    runner.close()


def test_every_copy_and_the_execution_run_on_the_sessions_own_stream(fake_trt, tmp_path):
    """Not the legacy default stream (0), not another stream: the one the session synchronizes."""
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry())
    own = runner.session.stream.ptr
    runner.run({"x": np.ones((3, 3)), "t": np.ones(3)})
    assert own != 0 and runner.session.context.streams == [own]
    assert fake_trt.cuda.log == [
        ("copy_from (host -> device)", own),
        ("copy_from (host -> device)", own),
        ("execute_async_v3", own),
        ("copy_to (device -> host)", own),
    ]
    runner.close()


def test_close_frees_device_memory_stream_and_context_once(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry())
    runner.run({"x": np.ones((2, 3)), "t": np.ones(2)})
    session = runner.session
    context = weakref.ref(session.context)  # the context holds TensorRT's activation memory
    assert len(fake_trt.cuda.memory) == 3 and len(fake_trt.cuda.streams) == 1
    runner.close()
    assert fake_trt.cuda.memory == {} and fake_trt.cuda.streams == {} and context() is None
    runner.close()  # a second close frees nothing twice (the fakes raise on a double free)
    session.close()
    with pytest.raises(TrtError) as e:
        runner.run({"x": np.ones((2, 3)), "t": np.ones(2)})
    assert str(e.value) == "fake: this TensorRT runner was closed"
    with pytest.raises(TrtError, match=r"^fake: the TensorRT session is closed$"):
        session.run({"x": np.ones((2, 3)), "t": np.ones(2)})


def test_refused_execution_is_one_line_and_close_drains_the_queued_copies(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="unet", entry=fake_entry())
    fake_trt.refuse.execute = True
    with pytest.raises(TrtError) as e:
        runner.run({"x": np.ones((2, 3)), "t": np.ones(2)})
    assert str(e.value) == "unet: TensorRT execute_async_v3 failed; see the TensorRT log"
    assert fake_trt.cuda.pending() == 2  # the input copies were enqueued before the failure
    runner.close()  # synchronizes before freeing the buffers those copies write
    assert fake_trt.cuda.memory == {} and fake_trt.cuda.streams == {}


def test_refused_shape_is_one_line_naming_component_and_input(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="unet", entry=fake_entry())
    fake_trt.refuse.shapes.add(("x", (3, 3)))
    with pytest.raises(TrtError) as e:
        runner.run({"x": np.ones((3, 3)), "t": np.ones(3)})
    assert str(e.value) == "unet: TensorRT refused shape [3, 3] for input x; see the TensorRT log"
    runner.close()


@pytest.mark.parametrize(
    "refuse, message",
    [
        ({"addresses": {"t"}}, "unet: TensorRT refused the device address of tensor t"),
        (
            {"shapes": {("x", (4, 3))}},
            "unet: TensorRT refused shape [4, 3] for input x; see the TensorRT log",
        ),
        ({"context": True}, "unet: TensorRT could not create an execution context; see the TensorRT log"),
    ],
    ids=["address", "max-shape", "context"],
)
def test_a_session_that_cannot_start_is_one_line_and_frees_what_it_allocated(
    fake_trt, tmp_path, refuse, message
):
    fake_trt.refuse = dataclasses.replace(fake_trt.refuse, **refuse)
    with pytest.raises(TrtError) as e:
        TrtEngineRunner(tmp_path / "fake.engine", name="unet", entry=fake_entry())
    assert str(e.value) == message
    assert fake_trt.cuda.memory == {} and fake_trt.cuda.streams == {}


def test_session_name_defaults_for_direct_use(fake_trt):
    session = EngineSession(trt_runner.load_engine("x.engine"), {"x": (4, 3), "t": (4,)})
    fake_trt.refuse.execute = True
    with pytest.raises(TrtError, match=r"^engine: TensorRT execute_async_v3 failed"):
        session.run({"x": np.ones((1, 3)), "t": np.ones(1)})
    session.close()


def test_runner_refuses_requests_outside_the_profile(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry())
    with pytest.raises(
        ProfileError, match=r"fake: x dim B \(batch\) = 5 is outside the engine's profile 1..4"
    ):
        runner.run({"x": np.zeros((5, 3)), "t": np.zeros(5)})


def test_runner_refuses_a_foreign_engine_before_loading_it(fake_trt, tmp_path):
    other = dataclasses.replace(PLATFORM, tensorrt_version="10.3.0.26")
    with pytest.raises(TrtError) as e:
        TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry(other))
    assert "engine built with TensorRT 10.3.0.26 but TensorRT 10.8.0.43 is installed" in str(e.value)
    assert "rebuild on this machine with svd-export build-engines --backend tensorrt" in str(e.value)
    assert fake_trt.loaded == []  # never deserialized


# --- the pipeline frees its runners ------------------------------------------------------------


def test_pipeline_close_frees_every_runner_and_is_a_context_manager(fake_trt, tmp_path):
    from svd_trt.families.svd.pipeline import SVDPipeline

    names = ("unet", "vae_decoder")
    runners = {n: TrtEngineRunner(tmp_path / "fake.engine", name=n, entry=fake_entry()) for n in names}
    runners["image_encoder"] = types.SimpleNamespace(run=lambda inputs: {})  # a runner without close
    with SVDPipeline(Manifest("tensorrt", "svd", preset("tiny"), {}), runners) as pipe:
        assert len(fake_trt.cuda.memory) == 6 and len(fake_trt.cuda.streams) == 2
    assert fake_trt.cuda.memory == {} and fake_trt.cuda.streams == {}
    pipe.close()  # twice: harmless
    with pytest.raises(TrtError, match=r"^vae_decoder: this TensorRT runner was closed$"):
        runners["vae_decoder"].run({"x": np.ones((1, 3)), "t": np.ones(1)})


def test_pipeline_close_frees_the_others_when_one_close_fails(fake_trt, tmp_path):
    from svd_trt.families.svd.pipeline import SVDPipeline

    def broken_close():
        raise RuntimeError("driver gone")

    runners = {
        "image_encoder": types.SimpleNamespace(run=lambda inputs: {}, close=broken_close),
        "unet": TrtEngineRunner(tmp_path / "fake.engine", name="unet", entry=fake_entry()),
    }
    pipe = SVDPipeline(Manifest("tensorrt", "svd", preset("tiny"), {}), runners)
    with pytest.raises(RuntimeError, match="driver gone"):
        pipe.close()
    assert fake_trt.cuda.memory == {} and fake_trt.cuda.streams == {}


# --- the GPU the runner runs on (Triton's GPU instance k: CUDA device k) --------------------------

A100 = Platform(PLATFORM.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0")  # FakeLibcuda's GPU 1


def test_platform_check_reads_the_gpu_the_runner_runs_on(fake_trt, tmp_path):
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry(A100), device=1)
    assert runner.placement == f"tensorrt {PLATFORM.tensorrt_version} on GPU 1 (NVIDIA A100-SXM4-80GB)"
    out = runner.run({"x": np.ones((2, 3)), "t": np.full(2, 2.0)})
    np.testing.assert_array_equal(out["y"], np.full((2, 3), 2.0, np.float16))
    runner.close()
    with pytest.raises(TrtError) as e:  # the same engine on GPU 0, an H100
        TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry(A100), device=0)
    assert "built for NVIDIA A100-SXM4-80GB (compute capability 8.0) but this GPU is NVIDIA H100" in str(
        e.value
    )
    assert "(CUDA device 0)" in str(e.value) and len(fake_trt.loaded) == 1  # the second never loaded


def test_a_gpu_that_is_not_there_is_one_line(fake_trt):
    with pytest.raises(
        TrtError, match=r"cuDeviceGet\(device 2\) returned CUresult 101 \(CUDA_ERROR_INVALID_DEVICE\)$"
    ):
        trt_runner.current_platform(2)
    with pytest.raises(
        TrtError, match=r"^cannot make CUDA device 2 current: cudaSetDevice returned cudaError 101$"
    ):
        trt_runner.use_device(2)


def test_runner_makes_its_device_current_on_every_calling_thread(fake_trt, tmp_path):
    """Loaded on GPU 1; run and closed from threads whose current device is 0 (Triton may call a model
    from another thread than the one that initialized it)."""
    import threading

    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry(A100), device=1)
    results = {}

    def in_thread(fn) -> None:
        def call():
            try:
                results[fn.__name__] = fn()
            except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
                results[fn.__name__] = e

        t = threading.Thread(target=call)
        t.start()
        t.join()

    def run():
        assert fake_trt.cuda.current == 0  # a new thread starts on device 0
        return runner.run({"x": np.ones((1, 3)), "t": np.full(1, 3.0)})["y"]

    def close():
        runner.close()
        return fake_trt.cuda.memory

    in_thread(run)
    in_thread(close)
    np.testing.assert_array_equal(results["run"], np.full((1, 3), 3.0, np.float16))
    assert results["close"] == {}
    assert fake_trt.cuda.wrapper.handle.set_calls.count(1) == 3  # load, run, close: each on device 1


def test_fake_refuses_an_execution_from_another_device(fake_trt, tmp_path):
    """The fake is honest about devices: the session alone (no runner setting the device) fails."""
    runner = TrtEngineRunner(tmp_path / "fake.engine", name="fake", entry=fake_entry(A100), device=1)
    fake_trt.cuda.set_device(0)
    with pytest.raises(
        FakeCudaError, match="execute_async_v3 of a context on device 1 with device 0 current"
    ):
        runner.session.run({"x": np.ones((1, 3)), "t": np.ones(1)})
    fake_trt.cuda.set_device(1)
    runner.close()
