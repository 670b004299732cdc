"""`svd-trt infer` loses nothing and fails early: an output never replaces an input, numeric
options and paths are checked before any component runs, and a write that fails anyway is one
line with no partial file. Every refusal here is asserted to open no runner."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_infer_cli import IMAGE, assert_one_line_error, infer

from svd_trt.families.svd import pipeline
from svd_trt.runtime import engine_pipeline, video


@pytest.fixture
def no_runner(monkeypatch):
    """Fail the test if the refusal came after a component was opened."""

    def refuse(*args, **kwargs):
        raise AssertionError("a runner was opened: the check came too late")

    monkeypatch.setattr(engine_pipeline, "open_runner", refuse)


def unchanged(path: Path, before: bytes) -> bool:
    return path.read_bytes() == before


# --- 1. an output never replaces an input


def test_gif_input_is_not_overwritten_by_the_same_out(tiny_engines, tmp_path, no_runner):
    gif = tmp_path / "in.gif"
    Image.open(IMAGE).save(gif)
    before = gif.read_bytes()
    result = infer(tiny_engines, gif, image=gif)
    assert result.exit_code == 2 and "would overwrite the input --image" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and unchanged(gif, before)


@pytest.mark.parametrize("alias", ["symlink", "hardlink", "dotdot"])
def test_other_spellings_of_the_input_are_the_same_file(tiny_engines, tmp_path, no_runner, alias):
    gif = tmp_path / "in.gif"
    Image.open(IMAGE).save(gif)
    before = gif.read_bytes()
    (tmp_path / "sub").mkdir()
    out = {
        "symlink": tmp_path / "link.gif",
        "hardlink": tmp_path / "hard.gif",
        "dotdot": tmp_path / "sub" / ".." / "in.gif",
    }[alias]
    if alias == "symlink":
        out.symlink_to(gif)
    elif alias == "hardlink":
        os.link(gif, out)
    result = infer(tiny_engines, out, image=gif)
    assert result.exit_code == 2 and "would overwrite the input --image" in result.output, result.output
    assert unchanged(gif, before)


@pytest.mark.parametrize("flag", ["--latents", "--image-noise"])
def test_npy_out_does_not_overwrite_the_noise_it_reads(tiny_engines, tmp_path, no_runner, flag):
    shape = (1, 2, 4, 16, 24) if flag == "--latents" else (1, 3, 32, 48)
    npy = tmp_path / "noise.npy"
    np.save(npy, np.zeros(shape, np.float32))
    before = npy.read_bytes()
    result = infer(tiny_engines, npy, flag, str(npy))
    assert result.exit_code == 2 and f"would overwrite the input {flag}" in result.output, result.output
    assert unchanged(npy, before)


def test_out_never_replaces_an_engine_file(tiny_engines, tmp_path, no_runner):
    link = tmp_path / "frames.npy"
    link.symlink_to(Path(tiny_engines) / "unet.onnx")
    result = infer(tiny_engines, link)
    assert result.exit_code == 2 and "would overwrite the input --engines" in result.output, result.output


def test_png_folder_out_does_not_replace_or_delete_an_input_frame(tiny_engines, tmp_path, no_runner):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("frame_000.png", "frame_007.png"):  # replaced (frame 0 of 2), deleted (stale)
        image = folder / name
        Image.open(IMAGE).save(image)
        result = infer(tiny_engines, folder, image=image)
        assert result.exit_code == 2 and "would overwrite the input --image" in result.output, result.output
        assert image.exists()


def test_an_input_beside_the_png_frames_is_fine(tiny_engines, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    image = folder / "photo.jpg"
    shutil.copy(IMAGE, image)
    result = infer(tiny_engines, folder, image=image)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["frame_000.png", "frame_001.png", "photo.jpg"]


@pytest.mark.parametrize("case", ["frame-of-the-folder", "link-to-the-video"])
def test_contact_sheet_and_out_cannot_be_one_file(tiny_engines, tmp_path, no_runner, case):
    if case == "frame-of-the-folder":
        out, sheet = tmp_path / "frames", tmp_path / "frames" / "frame_001.png"
    else:
        out, sheet = tmp_path / "v.gif", tmp_path / "sheet.png"
        out.write_bytes(b"an earlier video")
        sheet.symlink_to(out)
    result = infer(tiny_engines, out, "--contact-sheet", str(sheet))
    assert result.exit_code == 2 and "--contact-sheet" in result.output and "--out" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- 2. numbers: non-finite floats, zero frame rates, refused up front


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("option", ["--min-guidance-scale", "--max-guidance-scale", "--noise-aug-strength"])
def test_non_finite_floats_are_refused(tiny_engines, tmp_path, no_runner, option, value):
    out = tmp_path / "v.gif"
    assert_one_line_error(
        infer(tiny_engines, out, f"{option}={value}"), f"{option} must be a finite number", out
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-7", "1e-9"])
def test_bad_output_fps_is_refused_before_the_run(tiny_engines, tmp_path, no_runner, value):
    out = tmp_path / "v.mp4"
    assert_one_line_error(infer(tiny_engines, out, f"--output-fps={value}"), "--output-fps", out)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_fps_is_refused_before_the_run(tiny_engines, tmp_path, no_runner, value):
    out = tmp_path / "v.mp4"
    assert_one_line_error(infer(tiny_engines, out, f"--fps={value}"), "--fps must be positive", out)


def test_fps_zero_with_an_output_fps_is_still_refused(tiny_engines, tmp_path, no_runner):
    """--fps is the model's conditioning too: 0 is no frame rate whatever the file's is."""
    out = tmp_path / "v.mp4"
    assert_one_line_error(
        infer(tiny_engines, out, "--fps=0", "--output-fps=7"), "--fps must be positive", out
    )


# --- 5. paths that cannot be written: refused before the run


def test_empty_out_is_refused(tiny_engines, tmp_path, no_runner, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty path would otherwise mean "PNGs into the current folder"
    result = infer(tiny_engines, "")
    assert result.exit_code == 2 and "--out is empty" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_existing_file_without_suffix_is_refused(tiny_engines, tmp_path, no_runner):
    notes = tmp_path / "NOTES"
    notes.write_text("mine")
    result = infer(tiny_engines, notes)
    assert result.exit_code == 2 and "is not a directory" in result.output, result.output
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("name", ["sheet.jpg", "sheet.webp", "sheet"])
def test_contact_sheet_must_be_png_before_the_run(tiny_engines, tmp_path, no_runner, name):
    out = tmp_path / "v.gif"
    result = infer(tiny_engines, out, "--contact-sheet", str(tmp_path / name))
    assert_one_line_error(result, "--contact-sheet must be a .png", out)


def test_out_under_a_file_is_refused(tiny_engines, tmp_path, no_runner):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "v.mp4"
    result = infer(tiny_engines, out)
    assert result.exit_code == 2 and "cannot write --out" in result.output and "is a file" in result.output
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's sysfs")
def test_unwritable_folder_is_refused_even_for_root(tiny_engines, no_runner):
    """sysfs accepts no new files from anyone, root included (root ignores chmod, so a
    chmod-ed folder proves nothing here): a real EACCES/EROFS from the kernel."""
    result = infer(tiny_engines, "/sys/svd-trt-test.gif")
    assert result.exit_code == 2 and "cannot write --out /sys/svd-trt-test.gif" in result.output, (
        result.output
    )
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_is_refused(tiny_engines, tmp_path, no_runner):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = infer(tiny_engines, folder / "v.gif")
    finally:
        folder.chmod(0o700)
    assert result.exit_code == 2 and "Permission denied" in result.output, result.output


def test_size_the_encoder_refuses_is_caught_before_the_run(tiny_engines, tmp_path, no_runner, monkeypatch):
    """libx264 refuses a frame 30,000 pixels wide: the one-frame probe finds it, not the end of the run."""
    monkeypatch.setenv(
        "SVD_TRT_SKIP_MEMORY_CHECK", "1"
    )  # the memory check would refuse first on a small machine
    out = tmp_path / "v.mp4"
    result = infer(tiny_engines, out, "--width", "30000")
    assert_one_line_error(result, "cannot write --out", out)


# --- 5. what can only fail while writing: one line, no partial file


@pytest.mark.parametrize("out_name, writer", [("v.gif", "write_gif"), ("v.npy", "write_npy")])
def test_full_disk_at_write_time_is_one_line(tiny_engines, tmp_path, monkeypatch, out_name, writer):
    original, rendered = getattr(video, writer), []
    monkeypatch.setattr(pipeline.SVDPipeline, "decode", _recording(pipeline.SVDPipeline.decode, rendered))

    def fill_the_disk(frames, path, *args):
        original(frames[:1], path, *args)  # a partial file exists when the disk fills
        if len(frames) > 1:  # the run's two frames, not the probe's one
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(video, writer, fill_the_disk)
    out = tmp_path / out_name
    assert_one_line_error(infer(tiny_engines, out), "No space left on device", out)
    assert rendered, "the failure was meant to come at write time, after the run"


def test_full_disk_in_the_middle_of_png_frames_is_one_line(tiny_engines, tmp_path, monkeypatch):
    saves, original = [], Image.Image.save

    def save(self, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the second frame: the first is already in the temp folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "frames"
    assert_one_line_error(infer(tiny_engines, out), "No space left on device", out)
    assert len(saves) == 2


def _recording(method, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return method(*args, **kwargs)

    return wrapper


def test_full_disk_writing_the_sheet_keeps_the_video(tiny_engines, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)  # only the sheet uses it: the video is .npy
    out, sheet = tmp_path / "v.npy", tmp_path / "sheet.png"
    result = infer(tiny_engines, out, "--contact-sheet", str(sheet))
    assert result.exit_code == 2 and "cannot write" in result.output and "sheet.png" in result.output
    assert f"{out} was written" in result.output and out.exists() and not sheet.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 16 KiB tmpfs: a real ENOSPC. Needs root with CAP_SYS_ADMIN (skipped otherwise)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "svd-trt-test", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_real_full_disk_is_one_line(tiny_engines, tiny_filesystem):
    out = tiny_filesystem / "v.npy"  # 2 x 32 x 48 x 3 float32 = 36 KiB > 16 KiB; the probe's empty file fits
    assert_one_line_error(infer(tiny_engines, out), "No space left on device", out)
    assert list(tiny_filesystem.iterdir()) == []


def test_an_engine_failing_at_run_time_is_one_line_naming_it(failing_engines, tmp_path):
    """The real ONNX Runtime exception (InvalidArgument, not a RuntimeError) from a real session."""
    from conftest import FAILING_COMPONENT, FAILING_HEIGHT

    out = tmp_path / "v.npy"
    result = infer(failing_engines, out, "--height", str(FAILING_HEIGHT))
    assert_one_line_error(
        result,
        f"Error: the engines cannot run this request: {FAILING_COMPONENT}: [ONNXRuntimeError] : 2 : "
        "INVALID_ARGUMENT : Non-zero status code returned while running Gather node",
        out,
    )
    assert infer(failing_engines, out).exit_code == 0  # at the other heights the same engines run
