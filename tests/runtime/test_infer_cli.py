"""`svd-trt infer` on bad input: one line on stderr, exit code 2, no traceback, no output file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error

from svd_trt.runtime.cli import main

ASSETS = Path(__file__).resolve().parents[2] / "runtime" / "assets"
IMAGE = str(ASSETS / "coffee.jpg")
OK = ["--num-frames", "2", "--height", "32", "--width", "48", "--num-inference-steps", "1", "--no-progress"]


def infer(engines, out, *extra, image=IMAGE):
    args = ["infer", "--engines", str(engines), "--image", str(image), "--out", str(out), *OK, *extra]
    return CliRunner().invoke(main, args)


def test_happy_path_writes_gif(tiny_engines, tmp_path):
    result = infer(tiny_engines, tmp_path / "v.gif")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.gif").stat().st_size > 0


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--height", "36"], "multiples of 8"),
        (["--num-frames", "0"], "num-frames must be positive"),
        (["--num-frames", "-3"], "num-frames must be positive"),
        (["--num-inference-steps", "0"], "num-inference-steps must be positive"),
        (["--decode-chunk-size", "0"], "decode-chunk-size must be positive"),
    ],
    ids=["height", "frames0", "frames-neg", "steps0", "chunk0"],
)
def test_bad_generation_options(tiny_engines, tmp_path, extra, pattern):
    assert_one_line_error(infer(tiny_engines, tmp_path / "v.mp4", *extra), pattern, tmp_path / "v.mp4")


def test_bad_image_files(tiny_engines, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert_one_line_error(
        infer(tiny_engines, tmp_path / "v.mp4", image=text), "not a readable image", tmp_path / "v.mp4"
    )
    assert_one_line_error(
        infer(tiny_engines, tmp_path / "v.mp4", image=tmp_path / "nope.png"),
        "no such file",
        tmp_path / "v.mp4",
    )


def test_missing_engine_dir_and_file(tiny_engines, tmp_path):
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    assert_one_line_error(infer(tmp_path / "nowhere", out), "engine directory not found", out)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_engines, broken)
    (broken / "unet.onnx").unlink()
    assert_one_line_error(infer(broken, out), "missing file of component unet", out)


def test_wrong_shape_arrays(tiny_engines, tmp_path):
    out = tmp_path / "out" / "v.npy"
    out.parent.mkdir()
    np.save(tmp_path / "lat.npy", np.zeros((1, 2, 4, 8, 8), np.float32))
    assert_one_line_error(
        infer(tiny_engines, out, "--latents", str(tmp_path / "lat.npy")), "--latents must have shape", out
    )
    np.save(tmp_path / "noise.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert_one_line_error(
        infer(tiny_engines, out, "--image-noise", str(tmp_path / "noise.npy")),
        "--image-noise must have shape",
        out,
    )
    (tmp_path / "junk.npy").write_text("junk")
    assert_one_line_error(
        infer(tiny_engines, out, "--latents", str(tmp_path / "junk.npy")), "junk.npy: not a .npy file", out
    )


def test_unknown_output_type(tiny_engines, tmp_path):
    assert_one_line_error(infer(tiny_engines, tmp_path / "v.avi"), "unknown output type", tmp_path / "v.avi")
