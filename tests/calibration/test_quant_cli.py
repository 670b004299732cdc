"""The quantized UNet through the user's commands: `build-engines --unet-precision int8` on ONNX
Runtime, and `check` with its quantized-vs-float section (passing, failing, refusing)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from svd_trt.engines import accuracy
from svd_trt.engines.cli import main
from svd_trt.manifest import load_manifest

# The check's component sizes: the calibration fixture's (2 frames, 64x64), cheap on the CPU.
SIZES = ("--num-frames", "2", "--height", "64", "--width", "64", "--device", "cpu")


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    print(result.output)
    return result


def test_build_engines_int8_on_onnxruntime(small_snapshot, small_engines, small_calibration, tmp_path):
    out = tmp_path / "int8"
    result = invoke(
        *("build-engines", "--model", str(small_snapshot), "--out", str(out)),
        *("--unet-precision", "int8", "--calibration", str(small_calibration[0])),
    )
    assert result.exit_code == 0 and "unet int8 q/dq: quantized" in result.output
    manifest = load_manifest(out)
    assert manifest.components["unet"].precision == "int8"
    assert manifest.components["unet_float"] == small_engines[1].components["unet"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--unet-precision", "int8"], "--precision unet=int8 needs --calibration DIR"),
        (["--unet-precision", "fp8", "--calibration", "."], "fp8 needs TensorRT on a GPU of compute capability >= 8.9"),
        (["--calibration", "."], "--calibration applies to an int8 or fp8 precision only"),
    ],
)
def test_build_engines_quantization_errors(small_snapshot, tmp_path, args, words):
    result = invoke("build-engines", "--model", str(small_snapshot), "--out", str(tmp_path / "e"), *args)
    assert result.exit_code == 2 and result.output.strip().startswith(f"Error: {words}")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_check_scores_the_int8_unet_against_the_float_one(
    small_snapshot, small_int8, small_calibration, tmp_path
):
    engines, _ = small_int8
    refused = invoke("check", "--engines", str(engines), "--model", str(small_snapshot), *SIZES)
    assert refused.exit_code == 2 and "unet is int8: pass --calibration DIR" in refused.output
    report_dir = tmp_path / "report"
    result = invoke(
        *("check", "--engines", str(engines), "--model", str(small_snapshot), *SIZES),
        *("--calibration", str(small_calibration[0]), "--report", str(report_dir)),
    )
    assert result.exit_code == 0 and "quantized unet (int8) vs float: PASS" in result.output
    report = json.loads((report_dir / "report.json").read_text())
    # Every float component against the torch port, the float UNet among them.
    names = [c["name"] for c in report["components"]]
    assert sorted(names) == ["image_encoder", "unet_float", "vae_decoder", "vae_encoder"]
    assert all(c["passed"] for c in report["components"])
    q = report["quantized"]
    assert q["passed"] is True and q["precision"] == "int8" and q["min_psnr_db"] == accuracy.QUANT_MIN_PSNR
    assert q["unet_steps"]["samples"] > 0 and q["end_to_end"][0]["split"] == "held_out"
    md = (report_dir / "report.md").read_text()
    assert "## Quantized UNet (int8)" in md and "(bound >= 20 dB): PASS" in md


def test_check_fails_when_quantization_strays(
    small_snapshot, small_int8, small_calibration, tmp_path, monkeypatch
):
    """The same directory against an impossible bound: the section, and the exit code, fail."""
    monkeypatch.setattr(accuracy, "QUANT_MIN_PSNR", 200.0)
    result = invoke(
        *("check", "--engines", str(small_int8[0]), "--model", str(small_snapshot), *SIZES),
        *("--calibration", str(small_calibration[0]), "--report", str(tmp_path)),
    )
    assert result.exit_code == 1 and "quantized unet (int8) vs float: FAIL" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["quantized"]["passed"] is False
    assert all(c["passed"] for c in report["components"])
