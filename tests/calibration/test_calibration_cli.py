"""`svd-export calibrate` / `quantize` as commands: one options object, one library call, one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from svd_trt.calibration.cli import calibrate, quantize


def test_calibrate_command_records(small_engines, tmp_path):
    args = ["--engines", str(small_engines[0]), "--out", str(tmp_path / "cal"), "--runs", "1", "--steps", "2"]
    args += ["--frames", "2", "--height", "64", "--width", "64", "--images", "runtime/assets/coffee.jpg"]
    result = CliRunner().invoke(calibrate, args)
    assert result.exit_code == 0, result.output
    assert "recorded 2 of 2 UNet calls" in result.output
    assert len(list((tmp_path / "cal").glob("step-*.npz"))) == 2


def test_calibrate_needs_one_source(tmp_path):
    result = CliRunner().invoke(calibrate, ["--out", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of --model and --engines" in result.output


def test_quantize_offers_only_int8(small_engines, small_calibration):
    """ONNX Runtime's quantizer makes int8 for ONNX Runtime; fp8 (TensorRT's) is not offered."""
    args = [
        "--engines",
        str(small_engines[0]),
        "--calibration",
        str(small_calibration[0]),
        "--precision",
        "fp8",
    ]
    result = CliRunner().invoke(quantize, args)
    assert result.exit_code == 2 and "'fp8' is not 'int8'" in result.output, result.output
    assert "--unet-precision fp8" in CliRunner().invoke(quantize, ["--help"]).output


def test_quantize_bad_calibration_dir(small_engines, tmp_path):
    result = CliRunner().invoke(
        quantize, ["--engines", str(small_engines[0]), "--calibration", str(tmp_path)]
    )
    assert result.exit_code == 2 and "not a calibration directory" in result.output
