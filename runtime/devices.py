"""Where the engines run: `cpu`, `cuda` or `cuda:N`, checked before any component loads.

ONNX Runtime takes a list of execution providers and, when one cannot start (the CUDA
provider without its CUDA / cuDNN libraries), logs it and runs on the next one: a silent CPU
run. So a CUDA request is refused before any session opens where the installed build has no
CUDA provider (`onnxruntime` is the CPU build, `onnxruntime-gpu` the CUDA one; both install the
module `onnxruntime`), and every session's providers are read back after it opened
(`runners.OrtRunner`). TensorRT runs on a CUDA GPU only; the torch backend checks its own.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from svd_trt.errors import UserError

DEVICES = ("cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
# The distributions that install the `onnxruntime` module.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
GPU_README = "install onnxruntime-gpu in its place (README: ONNX Runtime on a GPU)"


class DeviceError(UserError, ValueError):
    """The engines cannot run on the device asked for: one line naming what is installed."""


@dataclass(frozen=True)
class Device:
    """`cpu`, or CUDA device `index` (Triton's GPU instance k runs on cuda:k)."""

    kind: str = "cpu"
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"


def parse_device(text: str | Device | None, backend: str) -> Device:
    """`cpu`, `cuda` or `cuda:N`; None = the backend's own (TensorRT: cuda:0, others: cpu)."""
    if isinstance(text, Device):
        return text
    if text is None:
        text = "cuda" if backend == "tensorrt" else "cpu"
    kind, sep, index = str(text).partition(":")
    if kind not in DEVICES or (sep and not index.isdigit()) or (sep and kind == "cpu"):
        raise DeviceError(f"device {text!r}: choose cpu, cuda or cuda:N")
    device = Device(kind, int(index) if index else 0)
    if backend == "tensorrt" and not device.is_cuda:
        raise DeviceError("TensorRT engines run on a CUDA GPU only; --device cpu runs ONNX or torch backends")
    return device


def check_device(backend: str, device: str | Device | None) -> Device:
    """The device, refused in one line where the backend cannot run there (before any component loads)."""
    parsed = parse_device(device, backend)
    if backend == "onnxruntime" and parsed.is_cuda:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        if CUDA_PROVIDER not in providers:
            raise DeviceError(
                f"--device cuda: ONNX Runtime has no CUDA execution provider here "
                f"({onnxruntime_build()} with {', '.join(providers)}); {GPU_README}"
            )
    return parsed


def onnxruntime_build() -> str:
    """Which ONNX Runtime distribution(s) and version are installed, e.g. `onnxruntime 1.32.0`."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return " and ".join(found) or "onnxruntime (no distribution metadata)"


def ort_providers(device: Device) -> list:
    """ONNX Runtime's provider list for `device`: CUDA first (its device_id), the CPU for what CUDA lacks."""
    if device.is_cuda:
        return [(CUDA_PROVIDER, {"device_id": device.index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_providers(used: list[str], device: Device, what: str) -> None:
    """DeviceError when a session asked for CUDA opened without it (ONNX Runtime's silent fallback)."""
    if device.is_cuda and CUDA_PROVIDER not in used:
        raise DeviceError(
            f"{what}: ONNX Runtime could not start its CUDA provider and fell back to {', '.join(used)} "
            f"({onnxruntime_build()}; usually a CUDA 12 or cuDNN 9 library it cannot find: "
            "onnxruntime.preload_dlls() or the CUDA build of torch provides them)"
        )
