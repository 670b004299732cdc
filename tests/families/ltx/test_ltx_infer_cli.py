"""`svd-trt infer` on LTX-Video engines: the bad-input classes that hold for SVD hold here too: one line
on stderr, exit code 2, no traceback, nothing written (tests/runtime/test_infer_cli.py for SVD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error

from svd_trt.runtime.cli import main

ASSETS = Path(__file__).resolve().parents[3] / "runtime" / "assets"
IMAGE = str(ASSETS / "coffee.jpg")
OK = ["--num-frames", "9", "--height", "32", "--width", "48", "--num-inference-steps", "2", "--no-progress"]


def infer(engines, out, *extra):
    return CliRunner().invoke(main, ["infer", "--engines", str(engines), "--out", str(out), *OK, *extra])


def test_text_and_image_to_video_write_their_frames(ltx_tiny_engines, tmp_path):
    """The happy paths: frames [F, H, W, 3] in [0, 1], F = --num-frames, as .npy."""
    for extra in ([], ["--image", IMAGE]):
        out = tmp_path / f"v{len(extra)}.npy"
        result = infer(ltx_tiny_engines, out, "--prompt", "a fox", *extra)
        assert result.exit_code == 0, result.output
        frames = np.load(out)
        assert frames.shape == (9, 32, 48, 3) and frames.min() >= 0 and frames.max() <= 1


@pytest.mark.parametrize(
    "extra, pattern",
    [
        ([], "LTX-Video engines need --prompt"),
        (["--prompt", "a", "--motion-bucket-id", "5"], "--motion-bucket-id does not apply to LTX-Video engines"),
        (["--prompt", "a", "--image-noise", "x.npy"], "--image-noise does not apply to LTX-Video engines"),
        (["--prompt", "a", "--num-frames", "8"], "--num-frames must be 1 + a multiple of 4"),
        (["--prompt", "a", "--height", "30"], "height and width must be multiples of 4"),
        (["--prompt", "a", "--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
        (["--prompt", "a", "--num-inference-steps", "0"], "--num-inference-steps must be positive"),
        (["--prompt", "a", "--image", "missing.png"], "missing.png: no such file"),
    ],
)
def test_bad_requests_are_one_line(ltx_tiny_engines, tmp_path, extra, pattern):
    out = tmp_path / "v.mp4"
    assert_one_line_error(infer(ltx_tiny_engines, out, *extra), pattern, out)


def test_a_corrupt_image_is_one_line(ltx_tiny_engines, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "v.mp4"
    assert_one_line_error(infer(ltx_tiny_engines, out, "--prompt", "a", "--image", str(bad)), str(bad), out)


def test_draw_files_are_checked(ltx_tiny_engines, tmp_path):
    """--latents of the wrong shape, or holding NaN, is the request's fault, refused before writing."""
    out = tmp_path / "v.mp4"
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 8, 2, 8, 12), np.float32))  # 2 latent frames where 9 frames need 3
    assert_one_line_error(
        infer(ltx_tiny_engines, out, "--prompt", "a", "--latents", str(wrong)), "--latents must have shape", out
    )
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 8, 3, 8, 12), np.nan, np.float32))
    assert_one_line_error(
        infer(ltx_tiny_engines, out, "--prompt", "a", "--latents", str(nan)), "holds NaN or inf values", out
    )


def test_out_never_overwrites_the_image(ltx_tiny_engines, tmp_path):
    from PIL import Image

    image = tmp_path / "first.gif"
    Image.open(IMAGE).save(image)
    before = image.read_bytes()
    result = infer(ltx_tiny_engines, image, "--prompt", "a", "--image", str(image))
    assert result.exit_code == 2 and "would overwrite the input --image" in result.output, result.output
    assert image.read_bytes() == before
