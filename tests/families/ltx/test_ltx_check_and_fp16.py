"""The TensorRT-target LTX graphs (`export-onnx --target tensorrt`: fp16 transformer and T5 with fp32
islands, fp32 VAE) run end to end in ONNX Runtime against diffusers' fp32 pipeline; `svd-export check`
passes on an LTX engine directory (fp32) and on that fp16 one, per component and end to end.

One model: the tiny-32x8 preset (real 32x / 8x ratios, timestep-conditioned decoder), CFG 3, decode noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from ltx_e2e import diffusers_frames, image_of, our_frames, write_snapshot
from ltx_runtime_models import one_torch_thread

from svd_trt.calibration.report import psnr
from svd_trt.engines.accuracy import CheckOptions, check_defaults, check_engines
from svd_trt.engines.build import BuildOptions, build_engines, export_onnx
from svd_trt.engines.check_cli import check
from svd_trt.manifest import load_manifest
from svd_trt.spec import E2E_MIN_PSNR, FRAME_MAX_ABS, Span

CALL = {
    "num_frames": 17, "height": 64, "width": 96, "num_inference_steps": 3, "max_sequence_length": 48,
    "guidance_scale": 3.0, "decode_timestep": 0.05, "decode_noise_scale": 0.025,
}  # fmt: skip
PROMPT, NEGATIVE = "a red fox in snow", "blurry, dark"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ltx_fp16")
    snapshot = write_snapshot(root / "snapshot", "tiny-32x8")
    build_engines(snapshot, root / "fp32", BuildOptions(backend="onnxruntime"))
    export_onnx(snapshot, root / "fp16", "tensorrt")
    return {"snapshot": snapshot, "fp32": root / "fp32", "fp16": root / "fp16"}


# fp16 frames vs diffusers fp32. u = 2^-11 (4.9e-4) per rounding to fp16. Each fp16 tensor (weights
# once, every fp16 node's output) rounds; the fp32 islands and RMS norms keep relative errors from
# compounding across blocks, so a path from the prompt to the velocity (2 T5 blocks, 1 DiT block, ~16
# fp16 matmul outputs) carries ~sqrt(16) u = 4u of independent roundings; CFG's v_u + g (v_c - v_u)
# scales them by up to 2g - 1 = 5; the Euler updates sum to sum |ds| = 1 over the schedule, so the
# latents carry ~20u ~ 1e-2 of the velocity scale (~1), and the fp32 decoder's O(1) gain with the
# halving of x / 2 + 0.5 brings it to the frames. FRAME_MAX_ABS["fp16"] = 3e-2 (svd_trt/spec.py: 8 of
# 255 levels, the project's fp16 frame bound) keeps a 3x margin for arithmetic in fp16 as well (ONNX
# Runtime's fp16 kernels on ARM64, a GPU's), and E2E_MIN_PSNR["fp16"] = 30 dB the mean. Measured here:
# max abs 8.4e-4 t2v and i2v (1.7u: ONNX Runtime's x86 CPU kernels compute fp16 nodes in fp32, so
# only storage rounds), PSNR 79 dB.
FP16_MAX_ABS = FRAME_MAX_ABS["fp16"]


@pytest.mark.parametrize("mode", ("t2v", "i2v"))
def test_tensorrt_target_graphs_run_in_onnxruntime_close_to_diffusers(dirs, mode):
    manifest = load_manifest(dirs["fp16"])
    assert {n: e.precision for n, e in manifest.components.items()} == {
        "text_encoder": "fp16", "transformer": "fp16", "vae_encoder": "fp32", "vae_decoder": "fp32",
    }  # fmt: skip
    inputs = {"prompt": PROMPT, "negative_prompt": NEGATIVE}
    if mode == "i2v":
        inputs["image"] = image_of(50, 120)
    ref = diffusers_frames(dirs["snapshot"], inputs, CALL)
    ours = our_frames(dirs["fp16"], inputs, CALL)
    assert np.isfinite(ours).all()
    err = float(np.abs(ours - ref).max())
    print(f"fp16 {mode}: max abs {err:.3g}, PSNR {psnr(ours, ref):.1f} dB")
    assert err <= FP16_MAX_ABS
    assert psnr(ours, ref) >= E2E_MIN_PSNR["fp16"]


@pytest.mark.parametrize("precision", ("fp32", "fp16"))
def test_check_passes_per_component_and_end_to_end(dirs, precision):
    """check at its LTX defaults (9 frames of 64x96, seed 0, 3 steps; text to video)."""
    report = check_engines(CheckOptions(dirs[precision], dirs["snapshot"], device="cpu", end_to_end=True))
    assert [c.name for c in report.components] == ["text_encoder", "transformer", "vae_encoder", "vae_decoder"]
    assert all(c.passed for c in report.components), [(c.name, c.outputs) for c in report.components]
    e = report.end_to_end
    assert (e.num_frames, e.height, e.width) == (9, 64, 96)
    assert e.passed and e.max_abs is not None and math.isfinite(e.max_abs)
    assert e.max_abs <= FRAME_MAX_ABS[precision]


def test_check_cli_image_to_video(dirs, tmp_path):
    """The command: an fp16 directory, image to video end to end, exit 0 and its report written."""
    image = tmp_path / "first.png"
    image_of(50, 40).save(image)
    args = ["--engines", str(dirs["fp16"]), "--model", str(dirs["snapshot"]), "--device", "cpu"]
    args += ["--end-to-end", "--image", str(image), "--report", str(tmp_path / "report")]
    result = CliRunner().invoke(check, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "end to end: PASS" in result.output
    assert "decode chunk" not in (tmp_path / "report" / "report.md").read_text()


def test_check_sizes_fit_the_directory():
    """check's small default video moves into the range a directory serves: a TensorRT directory
    built for diffusers' 161 x 512 x 704 only is checked there; an unbounded one at 9 x 64 x 96."""
    bounded = {"num_frames": Span(161, 161, 161), "height": Span(512, 512, 512), "width": Span(480, 704, 704)}
    values = check_defaults(SimpleNamespace(family="ltx", limits=bounded))
    assert (values["num_frames"], values["height"], values["width"]) == (161, 512, 480)
    unbounded = {"num_frames": Span(1, 161, None), "height": Span(32, 512, None), "width": Span(32, 704, None)}
    values = check_defaults(SimpleNamespace(family="ltx", limits=unbounded))
    assert (values["num_frames"], values["height"], values["width"], values["seed"]) == (9, 64, 96, 0)
