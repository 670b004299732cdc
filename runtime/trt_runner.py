"""The TensorRT backend: one engine per component, behind the Runner interface.

An engine runs only on the TensorRT version and GPU it was built for, so the manifest
entry records them (`extra["platform"]`) and a mismatch is refused before loading,
never deserialized by luck. The GPU checked is the one the runner runs on (`device`:
Triton's GPU instance k runs on CUDA device k), and that device is made current on the
calling thread before the engine loads and before every run and close: the CUDA runtime's
current device is per thread, and Triton may call a model from more than one. Requests outside the build's optimization profile
(`extra["profile"]`) are one-line errors naming the dim and the range.

Execution uses Polygraphy's CUDA wrapper and the engine's name-based I/O API (TensorRT
>= 8.5, the only one in 10.x) rather than Polygraphy's TrtRunner: TrtRunner imports
torch whenever it is installed (its is_torch check) and returns views of host buffers
it overwrites on the next call. Here device buffers are allocated once, at the
profile's max shapes, and every call returns fresh numpy arrays. No torch import.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svd_trt.errors import EngineError, UserError, first_line
from svd_trt.manifest import ComponentEntry, ManifestError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "TensorRT is not installed; install the tensorrt extra from NVIDIA's index: "
    "pip install 'svd-trt[tensorrt]' --extra-index-url https://pypi.nvidia.com"
)
PIP_POLYGRAPHY = "pip install 'polygraphy>=0.49'"
REBUILD_HINT = "rebuild on this machine with svd-export build-engines --backend tensorrt"
# cuDeviceGetAttribute ids (cuda.h): CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR.
_CC_MAJOR, _CC_MINOR = 75, 76


class TrtError(ManifestError):
    """TensorRT or its engines cannot be used here (missing, no GPU, foreign engine): one line."""


class TrtRunError(TrtError, EngineError):
    """TensorRT failed while running a valid request: an engine failure (svd_trt/errors.py), one line."""


class ProfileError(UserError, ValueError):
    """A request outside the engine's optimization profile: one line naming the dim and range."""


@dataclass(frozen=True)
class Platform:
    """What a TensorRT engine is bound to."""

    tensorrt_version: str
    gpu: str
    compute_capability: str


def tensorrt_version() -> str:
    """The installed TensorRT's version; TrtError (one line, how to install) without it or Polygraphy."""
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer is not
        raise TrtError(INSTALL_HINT) from None
    try:
        import polygraphy  # noqa: F401  (builds, loads and feeds engines)
    except ImportError:
        raise TrtError(
            f"Polygraphy is not installed (the TensorRT backend uses it): {PIP_POLYGRAPHY}"
        ) from None
    return str(tensorrt.__version__)


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(name, compute capability) of CUDA device `device`, from the driver API via ctypes."""
    lib = _libcuda()
    dev = ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    # Every call is checked: on a failed call the outputs stay zero and would pass for a GPU "" 0.0.
    _check(lib, "cuInit", lib.cuInit(0))
    _check(lib, f"cuDeviceGet(device {device})", lib.cuDeviceGet(ctypes.byref(dev), device))
    _check(lib, "cuDeviceGetName", lib.cuDeviceGetName(name, len(name), dev))
    for value, attribute, label in ((major, _CC_MAJOR, "MAJOR"), (minor, _CC_MINOR, "MINOR")):
        call = f"cuDeviceGetAttribute(COMPUTE_CAPABILITY_{label})"
        _check(lib, call, lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, dev))
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def _libcuda() -> Any:
    """The CUDA driver library; TrtError without it."""
    try:
        return ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        raise TrtError("no CUDA GPU: the NVIDIA driver (libcuda) is not installed") from None


def _check(lib: Any, call: str, code: int) -> None:
    """TrtError naming the driver call and its CUresult unless `code` is CUDA_SUCCESS (0)."""
    if code != 0:
        raise TrtError(f"no usable CUDA GPU: {call} returned CUresult {code} ({_cu_error_name(lib, code)})")


def _cu_error_name(lib: Any, code: int) -> str:
    """The CUresult's enum name (e.g. CUDA_ERROR_NO_DEVICE), from the driver itself."""
    text = ctypes.c_char_p()
    if lib.cuGetErrorName(code, ctypes.byref(text)) != 0 or not text.value:
        return "unknown CUresult"
    return text.value.decode(errors="replace")


def current_platform(device: int = 0) -> Platform:
    """This machine's TensorRT version and CUDA device `device`; TrtError when either is missing."""
    return Platform(tensorrt_version(), *gpu_identity(device))


def use_device(device: int) -> None:
    """Make CUDA device `device` current on this thread (runtime API, Polygraphy's libcudart)."""
    from polygraphy import cuda

    handle = cuda.wrapper().handle
    current = ctypes.c_int(-1)
    if handle.cudaGetDevice(ctypes.byref(current)) == 0 and current.value == device:
        return
    status = handle.cudaSetDevice(device)
    if status != 0:
        raise TrtError(f"cannot make CUDA device {device} current: cudaSetDevice returned cudaError {status}")


def platform_mismatch(recorded: Platform, current: Platform) -> str | None:
    """Why an engine built on `recorded` cannot run on `current`, or None when it can."""
    if recorded.tensorrt_version != current.tensorrt_version:
        return (
            f"built with TensorRT {recorded.tensorrt_version} "
            f"but TensorRT {current.tensorrt_version} is installed"
        )
    if (recorded.gpu, recorded.compute_capability) != (current.gpu, current.compute_capability):
        return (
            f"built for {recorded.gpu} (compute capability {recorded.compute_capability}) "
            f"but this GPU is {current.gpu} (compute capability {current.compute_capability})"
        )
    return None


def recorded_platform(path: str | Path, entry: ComponentEntry | None) -> Platform:
    """The platform a manifest entry was built on; TrtError when it is no TensorRT build."""
    extra = entry.extra if entry is not None else {}
    try:
        return Platform(**extra["platform"])
    except (KeyError, TypeError):
        raise TrtError(f"{path}: no TensorRT build record in the manifest; {REBUILD_HINT}") from None


_LABELS = {
    "B": "batch",
    "F": "frames",
    "H": "height",
    "W": "width",
    "h": "latent height",
    "w": "latent width",
}
_FLAGS = {"F": "--num-frames", "H": "--height", "h": "--height", "W": "--width", "w": "--width"}


def shape_error(
    component: str,
    dims: Mapping[str, list[Any]],
    profile: Mapping[str, Mapping[str, list[int]]],
    shapes: Mapping[str, tuple[int, ...]],
) -> str | None:
    """The first way `shapes` falls outside `profile` (input -> min/opt/max), or None."""
    missing = sorted(set(profile) - set(shapes))
    unknown = sorted(set(shapes) - set(profile))
    if missing or unknown:
        return f"{component}: inputs {sorted(shapes)} do not match the engine's {sorted(profile)}"
    for name, shape in shapes.items():
        lo, hi = profile[name]["min"], profile[name]["max"]
        if len(shape) != len(lo):
            return f"{component}: {name} has {len(shape)} dims, the engine takes {len(lo)} ({dims[name]})"
        for axis, (value, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= value <= b:
                return _out_of_range(component, name, dims[name][axis], axis, value, a, b)
    return None


def _out_of_range(component: str, name: str, dim: Any, axis: int, value: int, lo: int, hi: int) -> str:
    label = f"dim {dim} ({_LABELS[dim]})" if dim in _LABELS else f"axis {axis}"
    flag = "--decode-chunk-size" if component == "vae_decoder" and dim == "F" else _FLAGS.get(dim)
    hint = f"; rebuild the engines with a {flag} range that covers it" if flag else ""
    return f"{component}: {name} {label} = {value} is outside the engine's profile {lo}..{hi}{hint}"


def load_engine(path: str | Path) -> Any:
    """Deserialize an engine file with Polygraphy (trt.ICudaEngine)."""
    from polygraphy.backend.trt import engine_from_bytes

    try:
        engine = engine_from_bytes(Path(path).read_bytes())
    except Exception as e:  # Polygraphy raises its own exception type for a bad plan
        raise TrtError(f"{path}: TensorRT cannot deserialize it ({first_line(e)[:300]}); {REBUILD_HINT}") from None
    if engine is None:
        raise TrtError(f"{path}: TensorRT cannot deserialize it; {REBUILD_HINT}")
    return engine


class EngineSession:
    """One execution context and CUDA stream; device buffers allocated once at the profile's max shapes.

    Every copy and the execution are enqueued on this session's own stream, never on the
    legacy default stream (handle 0), which would serialize with every other stream.
    """

    def __init__(self, engine: Any, max_shapes: Mapping[str, tuple[int, ...]], name: str = "engine") -> None:
        import tensorrt as trt
        from polygraphy import cuda

        self.name = name
        self.closed = False
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:  # TensorRT returns None, e.g. when activation memory cannot be allocated
            raise TrtError(f"{name}: TensorRT could not create an execution context; see the TensorRT log")
        self.stream = cuda.Stream()
        self.buffers: dict[str, Any] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        try:
            self._allocate(cuda, names, max_shapes)
        except BaseException:
            self.close()  # a refused address or shape must not leak what was allocated so far
            raise

    def _allocate(self, cuda: Any, names: list[str], max_shapes: Mapping[str, tuple[int, ...]]) -> None:
        for n in self.inputs:  # output sizes at max follow from the inputs at max
            self._set_shape(n, tuple(max_shapes[n]))
        for n in names:
            size = int(np.prod(tuple(self.context.get_tensor_shape(n))))
            self.buffers[n] = cuda.DeviceArray(shape=(size,), dtype=self.dtypes[n])
            # Addresses never change: every later shape fits the max-size buffer.
            if not self.context.set_tensor_address(n, self.buffers[n].ptr):
                raise TrtError(f"{self.name}: TensorRT refused the device address of tensor {n}")

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if tuple(self.context.get_tensor_shape(name)) == shape:
            return  # set_input_shape re-runs shape inference; skip it when unchanged (as Polygraphy does)
        if not self.context.set_input_shape(name, shape):
            raise TrtError(
                f"{self.name}: TensorRT refused shape {list(shape)} for input {name}; see the TensorRT log"
            )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs cast to the engine's dtypes; outputs as new host arrays in the engine's dtypes."""
        if self.closed:
            raise TrtError(f"{self.name}: the TensorRT session is closed")
        host = {n: np.ascontiguousarray(inputs[n], dtype=self.dtypes[n]) for n in self.inputs}
        for n, arr in host.items():
            self._set_shape(n, arr.shape)
            self.buffers[n].copy_from(arr, self.stream)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise TrtRunError(f"{self.name}: TensorRT execute_async_v3 failed; see the TensorRT log")
        outs = {}
        for n in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n])
            self.buffers[n].view((out.size,)).copy_to(out, self.stream)
            outs[n] = out
        # The copies above are asynchronous: `outs` hold their values, and `host` may be
        # released, only once the stream has drained.
        self.stream.synchronize()
        return outs

    def close(self) -> None:
        """Free the device buffers, the stream and the context now; a second call does nothing.

        Polygraphy's arrays have no finalizer, and its Stream.free destroys the same handle
        again when called twice, so this session frees each exactly once.
        """
        if self.closed:
            return
        self.closed = True
        try:
            self.stream.synchronize()  # a run that raised may have left copies queued on these buffers
        finally:
            for buf in self.buffers.values():
                buf.free()
            self.buffers = {}
            self.stream.free()
            # The context holds TensorRT's activation memory; it must go before its engine.
            self.context = None
            self.engine = None


class TrtEngineRunner:
    """A component's engine on CUDA device `device`, checked against that GPU before it is loaded."""

    def __init__(
        self, path: str | Path, name: str = "", entry: ComponentEntry | None = None, device: int = 0
    ) -> None:
        self.name = name or Path(path).stem
        self.device = device
        recorded = recorded_platform(path, entry)
        current = current_platform(device)
        problem = platform_mismatch(recorded, current)
        if problem:
            raise TrtError(f"{path}: engine {problem} (CUDA device {device}); {REBUILD_HINT}")
        self.profile = entry.extra["profile"]
        self.dims = {k: v["dims"] for k, v in entry.inputs.items()}
        max_shapes = {k: tuple(v["max"]) for k, v in self.profile.items()}
        use_device(device)  # the engine, its context, stream and buffers belong to this device
        self.session: EngineSession | None = EngineSession(load_engine(path), max_shapes, self.name)
        self.placement = f"tensorrt {current.tensorrt_version} on GPU {device} ({current.gpu})"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise TrtError(f"{self.name}: this TensorRT runner was closed")
        problem = shape_error(self.name, self.dims, self.profile, {k: np.shape(v) for k, v in inputs.items()})
        if problem:
            raise ProfileError(problem)
        use_device(self.device)
        return self.session.run(inputs)

    def close(self) -> None:
        """Free the engine's device memory; closing twice is harmless."""
        if self.session is not None:
            use_device(self.device)
            self.session.close()
            self.session = None
