"""A writer killed (SIGKILL) at any point of the write sequence leaves the old directory or the new
one, and the same command run again succeeds with nothing left inside or beside the directory that
its manifest does not list. The kill points are real points of svd_trt/output_dir.py's sequence
(`kill_point`), reached through the real commands in a child process."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from svd_trt.engines.cli import main as svd_export
from svd_trt.manifest import load_manifest
from svd_trt.output_dir import KILL_ENV, owned_names

# Where the write sequence can die: a component exported into the stage, the quantizer mid-run
# (its prepared graph written beside the float one), everything in the stage and fsynced, between
# the two renames of the swap (no directory at OUT), after the swap before the old one is removed.
# (Each point past the quantizer costs a quantization of the tiny UNet, ~8 s, in the child and
# again in the rerun: the points are chosen to cover the sequence, not every line of it.)
BUILD_POINTS = ("exported:unet", "quantizing", "synced", "swapping", "swapped")
QUANTIZE_POINTS = ("quantizing", "swapping")


@pytest.fixture(scope="module")
def tiny_calibration(tiny_engines, tmp_path_factory) -> Path:
    """UNet inputs of two short runs of the tiny model (the quantizer's data)."""
    from svd_trt.calibration.capture import capture_calibration
    from svd_trt.families.svd.options import GenerationOptions

    out = tmp_path_factory.mktemp("calibration") / "tiny"
    options = GenerationOptions(num_frames=2, height=32, width=32, num_inference_steps=2, seed=0)
    capture_calibration(tiny_engines, None, out, options, runs=2, threads=2)
    return out


def killed(args: list[str], point: str) -> subprocess.CompletedProcess:
    """`svd-export ARGS` in a child that SIGKILLs itself at `point`."""
    env = {**os.environ, KILL_ENV: point}
    cmd = [sys.executable, "-m", "svd_trt.engines.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def run(args: list[str]):
    result = CliRunner().invoke(svd_export, args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def assert_clean(out: Path) -> None:
    """verify passes; OUT holds what its manifest lists; nothing beside it (lock, stage, old copy)."""
    run(["verify", "--engines", str(out)])
    manifest = load_manifest(out)
    assert {p.name for p in out.iterdir()} == owned_names(manifest, out) - {"accuracy"}
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def fresh(tiny_engines: Path, tmp_path: Path) -> Path:
    """A previous good (fp32) engine directory alone in its folder."""
    out = tmp_path / "work" / "engines"
    shutil.copytree(tiny_engines, out)
    return out


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_build_engines_killed_then_rerun(tiny_snapshot, tiny_engines, tiny_calibration, tmp_path, point):
    out = fresh(tiny_engines, tmp_path)
    args = ["build-engines", "--model", str(tiny_snapshot), "--out", str(out)]
    args += ["--unet-precision", "int8", "--calibration", str(tiny_calibration)]
    child = killed(args, point)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if out.exists():  # the old directory, whole, or the new one; never a mix
        precision = load_manifest(out).components["unet"].precision
        assert precision == ("int8" if point == "swapped" else "fp32")
        run(["verify", "--engines", str(out)])
    else:
        assert point == "swapping"  # the old one waits beside OUT for the next writer to restore it
    run(args)
    assert load_manifest(out).components["unet"].precision == "int8"
    assert_clean(out)


@pytest.mark.parametrize("point", QUANTIZE_POINTS)
def test_quantize_in_place_killed_then_rerun(tiny_engines, tiny_calibration, tmp_path, point):
    out = fresh(tiny_engines, tmp_path)
    args = ["quantize", "--engines", str(out), "--calibration", str(tiny_calibration)]
    child = killed(args, point)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert out.exists() or point == "swapping"
    run(args)
    assert load_manifest(out).components["unet"].precision == "int8"
    assert_clean(out)


def statuses(output: str) -> dict[str, str]:
    """`NAME: STATUS in N s` lines of a build's progress (the progress bar may share their line)."""
    return dict(re.findall(r"([a-z_][a-z0-9_ ./]*): (exported|reused|quantized) in \d", output))


def test_a_rebuild_with_nothing_changed_reuses_everything(
    tiny_snapshot, tiny_engines, tiny_calibration, tmp_path, capsys
):
    out = fresh(tiny_engines, tmp_path)
    args = ["build-engines", "--model", str(tiny_snapshot), "--out", str(out)]
    args += ["--unet-precision", "int8", "--calibration", str(tiny_calibration)]
    start = time.perf_counter()
    first = statuses(run(args).output)
    built = time.perf_counter() - start
    start = time.perf_counter()
    again = statuses(run(args).output)
    rebuilt = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nint8 quantization of the tiny model: {built:.2f} s; rebuild with nothing changed: {rebuilt:.2f} s")
    assert first["unet int8 q/dq"] == "quantized"
    assert set(again.values()) == {"reused"} and len(again) == 5, again
    assert_clean(out)


def test_a_rebuild_after_an_export_code_change_re_exports(tiny_snapshot, tiny_engines, tmp_path, monkeypatch):
    from svd_trt.export import onnx_export

    out = fresh(tiny_engines, tmp_path)
    args = ["build-engines", "--model", str(tiny_snapshot), "--out", str(out)]
    assert set(statuses(run(args).output).values()) == {"reused"}
    monkeypatch.setattr(onnx_export, "EXPORT_VERSION", onnx_export.EXPORT_VERSION + 1)
    assert set(statuses(run(args).output).values()) == {"exported"}
    assert_clean(out)


def _processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that mention `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while listed
        if text in line:
            found.append(line)
    return found


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="nvidia-modelopt is not installed")
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="lists processes through /proc")
def test_model_optimizer_killed_mid_run_then_rerun(tiny_snapshot, tiny_calibration, tmp_path):
    """Model Optimizer runs in a child interpreter: a killed writer takes it down too, so nothing
    goes on writing into a stage the next run removes."""
    from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt
    from svd_trt.export.onnx_export import build_onnx_dir

    out = tmp_path / "work" / "onnx"
    build_onnx_dir(tiny_snapshot, out, "tensorrt", {"unet": "fp32"})
    code = f"from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt as q; q({str(out)!r}, {str(tiny_calibration)!r})"
    env = {**os.environ, KILL_ENV: "quantizing"}
    with open(tmp_path / "child.log", "w") as log:  # not a pipe: reading one would wait for the grandchild
        child = subprocess.run([sys.executable, "-c", code], env=env, stdout=log, stderr=log, timeout=300)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    # The parent-death signal is delivered as the parent exits (a zombie has no command line); an
    # orphan would still be importing Model Optimizer (several seconds) when this looks.
    deadline = time.monotonic() + 2
    while _processes_naming(str(out.parent)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(str(out.parent)) == []
    assert load_manifest(out).components["unet"].precision == "fp32"  # the old directory, whole
    quantize_unet_modelopt(out, tiny_calibration)
    assert load_manifest(out).components["unet"].precision == "int8"
    assert_clean(out)
