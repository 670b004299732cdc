"""TensorRT, CUDA and Polygraphy's builder, faked for the tests of the TensorRT path.

Two seams are faked: Polygraphy's CUDA objects plus the TensorRT engine that
`runtime.trt_runner.EngineSession` drives (fixture `fake_trt`), and the one function that
calls Polygraphy's builder, `engines.tensorrt_build.build_engine` (fixture `fake_build`;
`polygraphy_calls` records the builder loaders themselves).

The CUDA fake is asynchronous the way CUDA documents async copies (for pinned host memory):
`copy_from`, `copy_to` and `execute_async_v3` only enqueue work on the stream they are
given, and that work runs when the stream is synchronized. Until then a host array a
device-to-host copy targets holds POISON, and device memory holds whatever was last written.
Work on the legacy default stream (handle 0), on an unknown or destroyed stream, or a copy
without a stream, fails the test: the session must keep all its work on its own stream.
So does freeing device memory while work is still queued, and freeing anything twice.
Signatures follow polygraphy.cuda (DeviceArray, DeviceView, Stream); a test checks that.

The fake machine has two GPUs (FakeLibcuda: an H100 and an A100). As in the CUDA runtime, the
current device is per thread (cudaSetDevice / cudaGetDevice through Polygraphy's wrapper,
device 0 until set); streams, engines and execution contexts belong to the device current
when they were created. As CUDA documents for kernels (copies may cross devices), an
execution enqueued while another device is current, or on another device's stream, fails;
so does creating a context on a device other than its engine's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import inspect
import json
import sys
import threading
import types
from collections.abc import Callable

import numpy as np
import pytest

from svd_trt.manifest import ComponentEntry
from svd_trt.runtime import trt_runner
from svd_trt.runtime.trt_runner import Platform

PLATFORM = Platform("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")
# All-ones bytes: NaN in fp16 / fp32, -1 in integers. What memory nobody wrote yet reads as.
POISON = 0xFF


class FakeCudaError(AssertionError):
    """Misuse of the fake GPU: the code under test would misbehave on a real one."""


# --- CUDA -------------------------------------------------------------------------------------


class FakeCuda:
    """The fake GPUs: device memory by address, streams by handle, a log of enqueued work, and each
    thread's current device."""

    DEVICES = 2
    ERROR_INVALID_DEVICE = 101  # cudaErrorInvalidDevice

    def __init__(self) -> None:
        self._thread = threading.local()
        self.wrapper = types.SimpleNamespace(handle=FakeCudart(self))  # polygraphy.cuda.wrapper()
        self.memory: dict[int, np.ndarray] = {}  # address -> its bytes (uint8)
        self.streams: dict[int, FakeStream] = {}  # live stream handles
        self.allocations: list[int] = []  # element count of every DeviceArray, in order
        self.log: list[tuple[str, int]] = []  # (what, stream handle) of every enqueued op
        self._next = 0x10000
        # polygraphy.cuda's classes, bound to this GPU (the fixture patches them in).
        self.DeviceView = type("DeviceView", (FakeDeviceView,), {"cuda": self})
        self.DeviceArray = type("DeviceArray", (FakeDeviceArray,), {"cuda": self})
        self.Stream = type("Stream", (FakeStream,), {"cuda": self})

    def _handle(self) -> int:
        self._next += 0x10000
        return self._next

    @property
    def current(self) -> int:
        """This thread's current device (cudaGetDevice)."""
        return getattr(self._thread, "device", 0)

    def set_device(self, device: int) -> int:
        if not 0 <= device < self.DEVICES:
            return self.ERROR_INVALID_DEVICE
        self._thread.device = device
        return 0

    def malloc(self, nbytes: int) -> int:
        ptr = self._handle()
        self.memory[ptr] = np.full(max(nbytes, 1), POISON, np.uint8)  # cudaMalloc does not zero
        return ptr

    def free(self, ptr: int) -> None:
        if ptr == 0:
            return  # cudaFree(0) is a no-op, as Polygraphy's DeviceArray.free relies on
        if ptr not in self.memory:
            raise FakeCudaError(f"cudaFree({ptr:#x}): not an allocation (double free?)")
        # Stricter than cudaFree (which in practice waits for the device): memory freed under
        # queued work is a use-after-free in stream order; synchronize first.
        if self.pending():
            raise FakeCudaError(f"cudaFree({ptr:#x}) with {self.pending()} operations still queued")
        del self.memory[ptr]

    def bytes_at(self, ptr: int, nbytes: int) -> np.ndarray:
        if ptr not in self.memory:
            raise FakeCudaError(f"device address {ptr:#x} is not allocated (freed?)")
        if nbytes > self.memory[ptr].size:
            raise FakeCudaError(f"{nbytes} bytes at {ptr:#x} overrun its {self.memory[ptr].size}")
        return self.memory[ptr][:nbytes]

    def enqueue(self, stream: int | None, what: str, work: Callable[[], None]) -> None:
        """Queue `work` on stream handle `stream`; it runs when that stream is synchronized."""
        if stream is None:
            raise FakeCudaError(f"{what}: no stream given, a synchronous copy on the legacy default stream")
        if stream == 0:
            raise FakeCudaError(f"{what}: enqueued on the legacy default stream (handle 0)")
        if stream not in self.streams:
            raise FakeCudaError(f"{what}: stream handle {stream:#x} is unknown or destroyed")
        self.log.append((what, stream))
        self.streams[stream].queue.append(work)

    def pending(self) -> int:
        """Operations enqueued on live streams and not yet run."""
        return sum(len(s.queue) for s in self.streams.values())


def _check_host(host: np.ndarray, dtype: np.dtype, nbytes: int, copying_from: bool) -> None:
    """Polygraphy's DeviceView._check_host_buffer, as assertions."""
    if host.dtype != dtype:
        raise FakeCudaError(f"host buffer dtype {host.dtype} != device buffer dtype {dtype}")
    if not host.flags.c_contiguous:
        raise FakeCudaError("host buffer is not contiguous")
    if (host.nbytes > nbytes) if copying_from else (host.nbytes < nbytes):
        raise FakeCudaError(f"host buffer of {host.nbytes} bytes does not fit a device buffer of {nbytes}")


class FakeDeviceView:
    """polygraphy.cuda.DeviceView: a typed window on device memory."""

    cuda: FakeCuda

    def __init__(self, ptr, shape, dtype):
        self.ptr, self.shape, self.dtype = int(ptr), tuple(shape), np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def copy_to(self, host_buffer, stream=None):
        """Async device -> host: `host_buffer` holds POISON until the stream reaches the copy."""
        if not self.nbytes:
            return host_buffer
        _check_host(host_buffer, self.dtype, self.nbytes, copying_from=False)
        ptr, nbytes, cuda = self.ptr, self.nbytes, self.cuda
        host_buffer.reshape(-1).view(np.uint8)[:] = POISON  # undefined until the copy ran

        def copy() -> None:
            host_buffer.reshape(-1).view(np.uint8)[:nbytes] = cuda.bytes_at(ptr, nbytes)

        cuda.enqueue(getattr(stream, "ptr", None), "copy_to (device -> host)", copy)
        return host_buffer


class FakeDeviceArray(FakeDeviceView):
    """polygraphy.cuda.DeviceArray over FakeCuda memory (POISON until written)."""

    def __init__(self, shape=None, dtype=None):
        super().__init__(0, shape if shape is not None else (), dtype if dtype is not None else np.float32)
        self.ptr = self.cuda.malloc(self.nbytes)
        self.cuda.allocations.append(int(np.prod(self.shape, dtype=np.int64)))

    def copy_from(self, host_buffer, stream=None):
        """Async host -> device: reads `host_buffer` when the stream reaches the copy."""
        if not host_buffer.nbytes:
            return self
        _check_host(host_buffer, self.dtype, self.nbytes, copying_from=True)
        ptr, cuda = self.ptr, self.cuda

        def copy() -> None:
            cuda.bytes_at(ptr, host_buffer.nbytes)[:] = host_buffer.reshape(-1).view(np.uint8)

        cuda.enqueue(getattr(stream, "ptr", None), "copy_from (host -> device)", copy)
        return self

    def view(self, shape=None, dtype=None):
        view = self.cuda.DeviceView(self.ptr, self.shape if shape is None else shape, dtype or self.dtype)
        if view.nbytes > self.nbytes:
            raise FakeCudaError(f"a view of {view.nbytes} bytes exceeds the array's {self.nbytes}")
        return view

    def free(self):
        self.cuda.free(self.ptr)
        self.shape, self.ptr = (), 0


class FakeCudart:
    """The two libcudart calls the runner makes through `polygraphy.cuda.wrapper().handle`."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.set_calls: list[int] = []

    def cudaGetDevice(self, device_ref):
        device_ref._obj.value = self.cuda.current
        return 0

    def cudaSetDevice(self, device):
        self.set_calls.append(device)
        return self.cuda.set_device(device)


class FakeStream:
    """polygraphy.cuda.Stream: a queue of work, drained in order by synchronize()."""

    cuda: FakeCuda

    def __init__(self):
        self.device = self.cuda.current
        self.ptr = self.cuda._handle()
        self.queue: list[Callable[[], None]] = []
        self.cuda.streams[self.ptr] = self

    def synchronize(self):
        if self.cuda.streams.get(self.ptr) is not self:
            raise FakeCudaError(f"cudaStreamSynchronize({self.ptr:#x}): the stream was destroyed")
        while self.queue:
            self.queue.pop(0)()

    def free(self):
        # Polygraphy's Stream.free keeps `ptr`: a second call destroys a dead handle.
        if self.cuda.streams.get(self.ptr) is not self:
            raise FakeCudaError(f"cudaStreamDestroy({self.ptr:#x}): the stream was already destroyed")
        self.synchronize()  # cudaStreamDestroy lets queued work finish; the handle dies at once
        del self.cuda.streams[self.ptr]


# --- TensorRT engine --------------------------------------------------------------------------


@dataclasses.dataclass
class Refusals:
    """Which TensorRT calls the next execution contexts refuse (return False / None)."""

    context: bool = False
    shapes: set[tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=set)
    addresses: set[str] = dataclasses.field(default_factory=set)
    execute: bool = False


class FakeContext:
    """y = x * t[:, None] for x [N, 3] fp16, t [N] fp32 (a pinned-fp32 input, like the timestep).

    execute_async_v3 captures shapes and addresses at enqueue time, as TensorRT does, and
    computes when its stream is synchronized.
    """

    def __init__(self, engine: FakeEngine, cuda: FakeCuda, refuse: Refusals) -> None:
        self.engine, self.cuda, self.refuse = engine, cuda, refuse
        self.device = cuda.current
        self.shapes = {"x": (-1, 3), "t": (-1,)}
        self.addresses: dict[str, int] = {}
        self.shape_sets = 0
        self.streams: list[int] = []  # the handle of every execute_async_v3

    def get_tensor_shape(self, name):
        return self.shapes["x"] if name == "y" else self.shapes[name]

    def set_input_shape(self, name, shape):
        if (name, tuple(shape)) in self.refuse.shapes:
            return False
        self.shapes[name] = tuple(shape)
        self.shape_sets += 1
        return True

    def set_tensor_address(self, name, ptr):
        if name in self.refuse.addresses:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        if self.refuse.execute:
            return False
        stream = self.cuda.streams.get(stream_handle)
        if self.cuda.current != self.device or (stream is not None and stream.device != self.device):
            where = f"stream of device {stream.device}" if stream is not None else "an unknown stream"
            raise FakeCudaError(
                f"execute_async_v3 of a context on device {self.device} with device {self.cuda.current} "
                f"current, on {where}"
            )
        self.streams.append(stream_handle)
        n, at = self.shapes["x"][0], dict(self.addresses)
        dtypes = {k: np.dtype(v) for k, v in self.engine.dtypes.items()}

        def tensor(name: str, count: int) -> np.ndarray:
            return self.cuda.bytes_at(at[name], count * dtypes[name].itemsize).view(dtypes[name])

        def compute() -> None:
            x, t = tensor("x", n * 3).reshape(n, 3), tensor("t", n)
            tensor("y", n * 3)[:] = (x * t[:, None]).reshape(-1)

        self.cuda.enqueue(stream_handle, "execute_async_v3", compute)
        return True


class FakeEngine:
    names = ["x", "t", "y"]
    dtypes = {"x": np.float16, "t": np.float32, "y": np.float16}
    num_io_tensors = 3

    def __init__(self, cuda: FakeCuda, refuse: Refusals) -> None:
        self.cuda, self.refuse = cuda, refuse
        self.device = cuda.current  # deserialized on the current device

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "output" if name == "y" else "input"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        if self.cuda.current != self.device:
            raise FakeCudaError(f"a context for an engine of device {self.device} on device {self.cuda.current}")
        return None if self.refuse.context else FakeContext(self, self.cuda, self.refuse)


FAKE_DIMS = {"x": {"dims": ["B", 3], "dtype": "float16"}, "t": {"dims": ["B"], "dtype": "float32"}}
FAKE_PROFILE = {"x": {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}, "t": {"min": [1], "opt": [2], "max": [4]}}


def fake_entry(platform: Platform = PLATFORM) -> ComponentEntry:
    """The manifest entry of the fake engine: its profile and the platform it was built on."""
    extra = {"profile": FAKE_PROFILE, "platform": dataclasses.asdict(platform)}
    return ComponentEntry("fake.engine", "fp16", "k", inputs=FAKE_DIMS, extra=extra)


@dataclasses.dataclass
class FakeTrt:
    """What the `fake_trt` fixture gives a test."""

    cuda: FakeCuda
    refuse: Refusals
    loaded: list = dataclasses.field(default_factory=list)  # engine paths deserialized


@pytest.fixture
def no_tensorrt(monkeypatch):
    """`import tensorrt` fails, as on our machines (a None entry makes import raise ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def fake_trt(monkeypatch) -> FakeTrt:
    """Fake `tensorrt`, CUDA driver (two GPUs) and Polygraphy CUDA objects; the engine loader returns
    a FakeEngine. The platform check is the real one, reading the fake driver."""
    import polygraphy.cuda

    fake = FakeTrt(FakeCuda(), Refusals())
    trt = types.ModuleType("tensorrt")
    trt.__version__ = PLATFORM.tensorrt_version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(polygraphy.cuda, "DeviceArray", fake.cuda.DeviceArray)
    monkeypatch.setattr(polygraphy.cuda, "Stream", fake.cuda.Stream)
    monkeypatch.setattr(polygraphy.cuda, "wrapper", lambda: fake.cuda.wrapper)
    monkeypatch.setattr(trt_runner, "_libcuda", FakeLibcuda)

    def load_engine(path):
        fake.loaded.append(path)
        return FakeEngine(fake.cuda, fake.refuse)

    monkeypatch.setattr(trt_runner, "load_engine", load_engine)
    return fake


# --- the builder ------------------------------------------------------------------------------


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
    """install(builder=None, platform=PLATFORM): build_engine and current_platform replaced."""

    from svd_trt.engines import tensorrt_build  # imports torch (the export): only where used

    def install(builder=None, platform=PLATFORM):
        builder = builder or FakeBuilder()
        monkeypatch.setattr(tensorrt_build, "build_engine", builder)
        monkeypatch.setattr(tensorrt_build, "current_platform", lambda: platform)
        return builder

    return install


@pytest.fixture
def polygraphy_calls(monkeypatch) -> dict:
    """Polygraphy's builder loaders replaced by recorders: loader name -> (args, kwargs) of its
    last call, each call bound to the real signature (a TypeError = we misuse the API)."""
    import polygraphy.backend.trt as ptrt

    calls: dict = {}

    def recorder(real, result):
        def fake(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)
            calls[real.__name__] = (args, kwargs)
            return result

        return fake

    monkeypatch.setattr(ptrt, "CreateConfig", recorder(ptrt.CreateConfig, "config"))
    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", recorder(ptrt.NetworkFromOnnxPath, "network"))
    monkeypatch.setattr(
        ptrt, "EngineBytesFromNetwork", recorder(ptrt.EngineBytesFromNetwork, lambda: b"plan")
    )
    return calls


# --- the CUDA driver, for gpu_identity ------------------------------------------------------


class FakeLibcuda:
    """The libcuda calls gpu_identity makes, on a machine with GPUS. `fail` maps a call to the
    CUresult it returns: "cuInit", "cuDeviceGet", "cuDeviceGetName", "cuDeviceGetAttribute:<id>"."""

    NAMES = {1: b"CUDA_ERROR_INVALID_VALUE", 100: b"CUDA_ERROR_NO_DEVICE", 101: b"CUDA_ERROR_INVALID_DEVICE"}
    # ordinal -> (name, {attribute id: value}); 75 / 76: compute capability major / minor
    GPUS = {0: (b"NVIDIA H100 80GB HBM3", {75: 9, 76: 0}), 1: (b"NVIDIA A100-SXM4-80GB", {75: 8, 76: 0})}

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[str] = []

    def _result(self, call: str) -> int:
        self.calls.append(call)
        return self.fail.get(call, 0)

    def cuInit(self, flags):
        return self._result("cuInit")

    def cuDeviceGet(self, device_ref, ordinal):
        code = self._result("cuDeviceGet") or (0 if ordinal in self.GPUS else 101)
        if code == 0:
            device_ref._obj.value = ordinal
        return code

    @staticmethod
    def _ordinal(device) -> int:  # a CUdevice passed by value: the c_int cuDeviceGet filled
        return device.value if isinstance(device, ctypes.c_int) else int(device)

    def cuDeviceGetName(self, buffer, length, device):
        code = self._result("cuDeviceGetName")
        if code == 0:
            buffer.value = self.GPUS[self._ordinal(device)][0][: length - 1]
        return code

    def cuDeviceGetAttribute(self, value_ref, attribute, device):
        code = self._result(f"cuDeviceGetAttribute:{attribute}")
        if code == 0:
            value_ref._obj.value = self.GPUS[self._ordinal(device)][1][attribute]
        return code

    def cuGetErrorName(self, code, text_ref):
        if code not in self.NAMES:
            return 1  # CUDA_ERROR_INVALID_VALUE, as the driver answers for an unknown code
        text_ref._obj.value = self.NAMES[code]
        return 0
