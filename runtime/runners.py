"""Backends behind one interface: `run(inputs: dict[str, ndarray]) -> dict[str, ndarray]`.

A runner owns one component. The pipeline and the accuracy check see only this
interface, so ONNX Runtime, TensorRT and the torch port are interchangeable. Each
backend's library is imported only when that backend is asked for: `torch` is the one
place the runtime reaches into the export side (the port it runs), and only then.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from svd_trt.errors import first_line
from svd_trt.manifest import ComponentEntry, ManifestError
from svd_trt.runtime.devices import Device, check_device, check_providers, ort_providers, parse_device
from svd_trt.spec import RUN_BACKENDS as BACKENDS

log = logging.getLogger(__name__)

PIP_TORCH = "pip install 'svd-trt[export]'"


class Runner(Protocol):
    name: str
    placement: str  # where it runs, as the backend reports it (the timing summary shows it)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _physical_cores() -> int:
    # ONNX Runtime is fastest with one thread per physical core; hyperthreads only contend.
    n = os.cpu_count() or 1
    try:
        import re

        with open("/proc/cpuinfo") as f:
            cores = {
                (p, c)
                for p, c in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", f.read(), re.S)
            }
        return max(1, min(n, len(cores) or n))
    except OSError:
        return n


# Idle ONNX Runtime workers spin, by default, waiting for the next parallel op, on the cores the main
# thread, the host code and the other components' pools need. Sleeping instead made an LTX call 8%
# faster on a 2-core machine and left SVD's unchanged (docs/benchmarks.md, LTX section); measured on
# 2 cores only, so a many-core server can turn spinning back on: SVD_TRT_ORT_SPIN=1.
SPIN_ENV = "SVD_TRT_ORT_SPIN"
SPIN_WAIT = os.environ.get(SPIN_ENV, "0") not in ("", "0")


class OrtRunner:
    """One ONNX Runtime session; inputs are cast to the dtypes the graph declares.

    `device`: cpu, cuda or cuda:N. The providers the session runs with are read back after it
    opened: CUDA asked for and not in use (ONNX Runtime falls back silently) is a DeviceError.
    """

    def __init__(
        self, path: str | Path, name: str = "", device: str | Device = "cpu", threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.name = name or Path(path).stem
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or _physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN_WAIT else "0")
        opts.log_severity_level = 3
        # The memory pattern allocates a second, contiguous copy of a graph's planned buffers from
        # its second run on, beside the first run's: the arena doubles for every component run
        # more than once (UNet steps, decode chunks) at no measured speed gain (docs/memory.md).
        opts.enable_mem_pattern = False
        device = check_device("onnxruntime", device)  # CUDA asked of a build without it: one line
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=ort_providers(device))
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile, ...)
            raise ManifestError(
                f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {first_line(e)[:300]})"
            ) from None
        used = self.session.get_providers()
        check_providers(used, device, self.name)
        where = f" (GPU {device.index})" if device.is_cuda else ""
        self.placement = f"onnxruntime {', '.join(used)}{where}"
        self.dtypes = {i.name: _ORT_DTYPES[i.type] for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in inputs.items()}
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs))


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def open_runner(engine_dir: str | Path, name: str, entry: ComponentEntry, backend: str, **options) -> Runner:
    """The runner of one component of an engine directory."""
    path = Path(engine_dir) / entry.file
    if backend == "onnxruntime":
        return OrtRunner(path, name=name, **options)
    if backend == "tensorrt":
        from svd_trt.runtime.trt_runner import TrtEngineRunner

        device = parse_device(options.get("device"), backend)
        return TrtEngineRunner(path, name=name, entry=entry, device=device.index)
    if backend == "torch":
        # The PyTorch port of the snapshot the directory was exported from: see export/torch_backend.py.
        # options: device (default cuda if available, else cpu), fast, snapshot, cuda_graphs.
        try:
            from svd_trt.export.torch_backend import open_torch_runner
        except ImportError as e:
            raise ManifestError(
                f"the torch backend needs PyTorch and safetensors ({e}): {PIP_TORCH}"
            ) from None
        return open_torch_runner(engine_dir, name, **options)
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
