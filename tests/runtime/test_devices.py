"""`--device cpu|cuda` (runtime/devices.py): a CUDA request where ONNX Runtime has no CUDA provider is
one line before any component loads; ONNX Runtime's silent fallback to the CPU is caught after the
session opens; the providers in use are in the timing summary."""

from __future__ import annotations

import onnxruntime
import pytest
from test_infer_cli import assert_one_line_error, infer

from svd_trt.runtime import runners
from svd_trt.runtime.devices import Device, DeviceError, check_device, onnxruntime_build, parse_device

CPU_BUILD = "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
needs_cpu_build = pytest.mark.skipif(not CPU_BUILD, reason="onnxruntime here has the CUDA provider")


@pytest.mark.parametrize(
    "text, backend, device",
    [
        (None, "onnxruntime", Device("cpu")),
        (None, "tensorrt", Device("cuda", 0)),
        ("cuda", "onnxruntime", Device("cuda", 0)),
        ("cuda:3", "tensorrt", Device("cuda", 3)),
    ],
)
def test_parse_device(text, backend, device):
    assert parse_device(text, backend) == device
    assert str(device) == ("cpu" if device.kind == "cpu" else f"cuda:{device.index}")


@pytest.mark.parametrize(
    "text, backend, message",
    [
        ("gpu", "onnxruntime", "device 'gpu': choose cpu, cuda or cuda:N"),
        ("cuda:x", "onnxruntime", "device 'cuda:x': choose cpu, cuda or cuda:N"),
        ("cpu:1", "onnxruntime", "device 'cpu:1': choose cpu, cuda or cuda:N"),
        ("cpu", "tensorrt", "TensorRT engines run on a CUDA GPU only"),
    ],
)
def test_bad_devices_are_one_line(text, backend, message):
    with pytest.raises(DeviceError, match=f"^{message}"):
        parse_device(text, backend)


@needs_cpu_build
def test_cuda_on_the_cpu_build_is_one_line_before_any_component_loads(tiny_engines, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(runners, "OrtRunner", lambda *a, **k: opened.append(a))
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    result = infer(tiny_engines, out, "--device", "cuda")
    providers = ", ".join(onnxruntime.get_available_providers())
    build = f"onnxruntime {onnxruntime.__version__}"
    assert onnxruntime_build() == build  # the CPU build, and no onnxruntime-gpu beside it
    assert_one_line_error(
        result,
        f"--device cuda: ONNX Runtime has no CUDA execution provider here ({build} with {providers}); "
        "install onnxruntime-gpu in its place (README: ONNX Runtime on a GPU)",
        out,
    )
    assert opened == [] and list(out.parent.iterdir()) == []  # nothing opened, nothing written


@needs_cpu_build
def test_a_silent_fallback_to_the_cpu_is_refused(tiny_engines, tmp_path, monkeypatch):
    """onnxruntime-gpu whose CUDA libraries are missing lists the CUDA provider, then opens sessions on
    the CPU with a warning. Here the CPU build claims the provider: the real InferenceSession, asked
    for CUDA, falls back the same way, and the runner refuses it."""
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    assert check_device("onnxruntime", "cuda") == Device("cuda", 0)
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    assert_one_line_error(
        infer(tiny_engines, out, "--device", "cuda"),
        "image_encoder: ONNX Runtime could not start its CUDA provider and fell back to CPUExecutionProvider",
        out,
    )


def test_timing_summary_names_the_providers_in_use(tiny_engines, tmp_path):
    result = infer(tiny_engines, tmp_path / "v.gif", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("| onnxruntime CPUExecutionProvider")
