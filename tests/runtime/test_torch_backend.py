"""`--backend torch`: the port of the engines' snapshot behind the runtime's Runner interface."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from svd_trt.families.svd.pipeline import GenerationOptions, SVDPipeline
from svd_trt.runtime.cli import main
from svd_trt.spec import FRAME_MAX_ABS

ASSETS = Path(__file__).resolve().parents[2] / "runtime" / "assets"
IMAGE = str(ASSETS / "coffee.jpg")
# Both backends run fp32 on the CPU: ONNX Runtime's kernels and torch's differ by ~1e-6 per
# call (summation order; the fused QKV GEMM of the fast path is one more reordering), and
# the Euler loop amplifies that by at most its step count (svd_trt/spec.py: FRAME_MAX_ABS).
FRAME_TOL = FRAME_MAX_ABS["fp32"]
OPTS = GenerationOptions(
    num_frames=3, height=32, width=48, num_inference_steps=3, decode_chunk_size=2, seed=0
)


def _image() -> Image.Image:
    return Image.open(IMAGE).convert("RGB")


@pytest.fixture(scope="module")
def ort_frames(tiny_engines) -> np.ndarray:
    return SVDPipeline.from_engine_dir(tiny_engines, backend="onnxruntime")(_image(), OPTS).frames


@pytest.mark.parametrize("fast", [False, True], ids=["port", "fast-attention"])
def test_torch_backend_equals_onnxruntime(tiny_engines, ort_frames, fast):
    """CFG, 3 steps, a decode tail chunk (3 = 2 + 1): same frames as the ONNX engines."""
    pipe = SVDPipeline.from_engine_dir(tiny_engines, backend="torch", device="cpu", fast=fast)
    frames = pipe(_image(), OPTS).frames
    assert frames.shape == ort_frames.shape == (3, 32, 48, 3)
    err = float(np.abs(frames - ort_frames).max())
    assert err <= FRAME_TOL, err
    # the encoder and decoder halves share one loaded VAE; CPU runs are fp32
    runners = pipe.runners
    assert runners["vae_encoder"].module.module is runners["vae_decoder"].module.module
    assert all(r.dtype == torch.float32 for r in runners.values())


def test_cli_backend_torch(tiny_engines, tmp_path, ort_frames):
    out = tmp_path / "v.npy"
    args = ["infer", "--engines", str(tiny_engines), "--image", IMAGE, "--out", str(out)]
    args += ["--num-frames", "3", "--height", "32", "--width", "48", "--num-inference-steps", "3"]
    args += ["--decode-chunk-size", "2", "--seed", "0", "--backend", "torch", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    frames = np.load(out)
    assert frames.shape == ort_frames.shape
    assert float(np.abs(frames - ort_frames).max()) <= FRAME_TOL


def _with_source(tiny_engines: Path, tmp_path: Path, source: str) -> Path:
    moved = tmp_path / "engines"
    shutil.copytree(tiny_engines, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source"] = source
    (moved / "manifest.json").write_text(json.dumps(manifest))
    return moved


def test_gone_snapshot_is_one_line_error_and_snapshot_option(tiny_engines, tiny_snapshot, tmp_path):
    engines = _with_source(tiny_engines, tmp_path, str(tmp_path / "nowhere"))
    out = tmp_path / "v.mp4"
    args = ["infer", "--engines", str(engines), "--image", IMAGE, "--out", str(out), "--backend", "torch"]
    result = CliRunner().invoke(main, [*args, "--num-frames", "2", "--height", "32", "--width", "48"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is gone" in lines[0] and "snapshot=PATH" in lines[0], result.output
    assert not out.exists()
    # the Python API takes the snapshot's new place
    pipe = SVDPipeline.from_engine_dir(engines, backend="torch", device="cpu", snapshot=tiny_snapshot)
    assert pipe.runners["unet"].name == "unet"


def test_without_torch_is_one_line_with_the_install_command(tiny_engines, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "svd_trt.export.torch_backend", None)  # as where torch is not installed
    out = tmp_path / "v.mp4"
    args = [
        "infer",
        "--engines",
        str(tiny_engines),
        "--image",
        IMAGE,
        "--out",
        str(out),
        "--backend",
        "torch",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'svd-trt[export]'" in lines[0], result.output


def test_unknown_device_is_one_line_error(tiny_engines):
    from svd_trt.manifest import ManifestError

    with pytest.raises(ManifestError, match="cpu or cuda"):
        SVDPipeline.from_engine_dir(tiny_engines, backend="torch", device="meta")


def test_onnxruntime_path_never_imports_torch(tiny_engines):
    """Opening and running ONNX engines through the CLI's modules leaves torch unimported."""
    code = (
        "import sys; from svd_trt.runtime import cli; from svd_trt.families.svd.pipeline import SVDPipeline\n"
        f"p = SVDPipeline.from_engine_dir({str(tiny_engines)!r}, backend='onnxruntime')\n"
        "import numpy as np; p(np.zeros((40, 60, 3), np.uint8), num_frames=2, height=32, width=48,"
        " num_inference_steps=1)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers'))\n"
        "sys.exit(f'imported {bad[:5]}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fast_attention_is_the_same_math():
    """Fused QKV self-attention and the one-key cross-attention shortcut equal the port's attention."""
    from svd_trt.families.svd.port.fast_attention import FastAttention, speed_up_attention
    from svd_trt.families.svd.port.layers import Attention, ImageSelfAttention

    torch.manual_seed(0)
    block = torch.nn.ModuleDict(
        {
            "attn1": Attention(32, 4, 8),
            "attn2": Attention(32, 4, 8, cross_attention_dim=16),
            "mid": ImageSelfAttention(32, 1, 32, bias=True, norm_num_groups=8),
        }
    ).eval()
    x, context, image = torch.randn(3, 10, 32), torch.randn(3, 1, 16), torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        ref = [block["attn1"](x), block["attn2"](x, context), block["mid"](image)]
        assert speed_up_attention(block) == 3
        out = [block["attn1"](x), block["attn2"](x, context), block["mid"](image)]
    assert type(block["attn1"]) is FastAttention
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # q, k, v are views of the fused weight: no second copy of the weights
    attn = block["attn1"]
    assert attn.to_q.weight.data_ptr() == attn.qkv_weight.data_ptr()
    assert attn.to_v.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()
    # the state dict keeps the checkpoint's keys and nothing else
    assert set(block.state_dict()) == {k for k in block.state_dict() if "qkv" not in k}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_equals_the_fp32_port(tiny_engines):
    """fp16 + fast attention + the UNet's CUDA graph vs the fp32 port on the CPU, end to end."""
    ref = SVDPipeline.from_engine_dir(tiny_engines, backend="torch", device="cpu")(_image(), OPTS).frames
    pipe = SVDPipeline.from_engine_dir(tiny_engines, backend="torch", device="cuda")
    frames = pipe(_image(), OPTS).frames
    frames2 = pipe(_image(), OPTS).frames  # the second call replays the captured graph
    assert type(pipe.runners["unet"]).__name__ == "CudaGraphRunner"
    np.testing.assert_array_equal(frames, frames2)
    # fp16 weights and activations: ~1e-3 relative per call; frames in [0, 1]
    assert float(np.abs(frames - ref).max()) <= 2e-2
