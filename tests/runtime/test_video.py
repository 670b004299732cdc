"""Frame writers: every format read back, bad paths rejected, failures leave nothing behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from svd_trt.runtime import video
from svd_trt.runtime.video import contact_sheet, save_frames, to_uint8


def gradient_frames(count: int = 5, height: int = 64, width: int = 96) -> np.ndarray:
    """A diagonal gradient sliding right one step per frame: float32 [F, H, W, 3] in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        r = ((x + 8 * t) % width) / (width - 1)
        g = y / (height - 1)
        b = 0.5 + 0.5 * np.sin((x + y) / 7 + t)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 1).astype(np.float32)


def entries(folder: Path) -> list[str]:
    """Every name in `folder`, hidden temp files included."""
    return sorted(p.name for p in folder.iterdir())


def decode_mp4(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream.codec_context.name, images


def test_to_uint8_rounds_and_clips() -> None:
    x = np.array([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 0.5, 1.0, 1.7], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 0, 0, 128, 255, 255])
    assert to_uint8(x).dtype == np.uint8


@pytest.mark.parametrize(("height", "width"), [(64, 96), (63, 95)])
def test_mp4_is_h264_with_every_frame(tmp_path: Path, height: int, width: int) -> None:
    frames = gradient_frames(5, height, width)
    path = save_frames(frames, tmp_path / "clip.mp4", fps=7)
    codec, images = decode_mp4(path)
    assert codec == "h264"
    assert len(images) == 5
    # Odd sizes are padded to even by one pixel for yuv420p.
    assert images[0].shape == (height + height % 2, width + width % 2, 3)
    # Lossy, but close to the source (crf 18 on a smooth gradient).
    decoded = np.stack(images)[:, :height, :width].astype(np.float32)
    assert np.abs(decoded - to_uint8(frames)).mean() < 6
    assert entries(tmp_path) == ["clip.mp4"]


def test_mp4_frame_rate(tmp_path: Path) -> None:
    path = save_frames(gradient_frames(3), tmp_path / "clip.mp4", fps=7)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 7
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_gif_loops_with_every_frame(tmp_path: Path) -> None:
    path = save_frames(gradient_frames(5, 63, 95), tmp_path / "clip.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (95, 63)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100


def test_npy_is_exact(tmp_path: Path) -> None:
    frames = gradient_frames()
    path = save_frames(frames, tmp_path / "clip.npy", fps=7)
    loaded = np.load(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, frames)


@pytest.mark.parametrize("existing", [False, True])
def test_png_dir_holds_every_frame(tmp_path: Path, existing: bool) -> None:
    frames = gradient_frames(5, 63, 95)
    out = tmp_path / "frames"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("kept")
        (out / "frame_009.png").write_bytes(b"stale frame from a longer clip")
    path = save_frames(frames, out, fps=7)
    names = sorted(p.name for p in path.glob("frame_*.png"))
    assert names == [f"frame_{i:03d}.png" for i in range(5)]
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(path / name)), to_uint8(frames[i]))
    assert (out / "notes.txt").exists() == existing
    assert entries(tmp_path) == ["frames"]


def test_existing_dir_with_suffix_gets_pngs(tmp_path: Path) -> None:
    out = tmp_path / "run.v1"
    out.mkdir()
    save_frames(gradient_frames(2), out, fps=7)
    assert entries(out) == ["frame_000.png", "frame_001.png"]


def test_contact_sheet_grid(tmp_path: Path) -> None:
    frames = gradient_frames(5, 63, 95)
    path = contact_sheet(frames, tmp_path / "sheet.png", columns=3, gap=2)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (2 * 63 + 2, 3 * 95 + 2 * 2, 3)
    u8 = to_uint8(frames)
    np.testing.assert_array_equal(sheet[:63, :95], u8[0])
    np.testing.assert_array_equal(sheet[65:, 97 : 97 + 95], u8[4])
    assert (sheet[63:65] == 255).all()  # the gap between rows
    assert (sheet[65:, 194:] == 255).all()  # the empty sixth cell


def test_contact_sheet_default_columns(tmp_path: Path) -> None:
    sheet = np.asarray(Image.open(contact_sheet(gradient_frames(5, 10, 20), tmp_path / "s.png", gap=1)))
    assert sheet.shape == (2 * 10 + 1, 3 * 20 + 2, 3)


@pytest.mark.parametrize("name", ["clip.avi", "clip.webm", "clip.png"])
def test_unknown_extension_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.mp4, \.gif, \.npy") as err:
        save_frames(gradient_frames(2), tmp_path / name, fps=7)
    assert "\n" not in str(err.value)
    assert entries(tmp_path) == []


@pytest.mark.parametrize("shape", [(64, 96, 3), (2, 64, 96, 4), (0, 8, 8, 3)])
def test_bad_frame_shapes_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        save_frames(np.zeros(shape, np.float32), tmp_path / "clip.mp4", fps=7)


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: object, attr: str, n: int, folder: Path
) -> list[str]:
    """Make owner.attr raise on its n-th call; returns what `folder` held at that moment,
    so a test can show a partial temp file existed and was then cleaned up."""
    original, calls, seen = getattr(owner, attr), [], []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            seen.extend(entries(folder))
            raise RuntimeError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attr, flaky)
    return seen


def test_mp4_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # x264 buffers ~40 frames of lookahead before the first packet reaches the file.
    seen = fail_on_call(monkeypatch, av.VideoFrame, "from_ndarray", 55, tmp_path)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_frames(gradient_frames(60, 16, 16), tmp_path / "clip.mp4", fps=7)
    assert len(seen) == 1 and seen[0].startswith(".clip.mp4.")  # a partial temp existed
    assert entries(tmp_path) == []


def test_failure_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "clip.npy"
    target.write_bytes(b"previous")

    def half_write(frames: np.ndarray, tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(video, "write_npy", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_frames(gradient_frames(), target, fps=7)
    assert entries(tmp_path) == ["clip.npy"]
    assert target.read_bytes() == b"previous"


def test_png_dir_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fail_on_call(monkeypatch, Image.Image, "save", 3, tmp_path)
    with pytest.raises(RuntimeError):
        save_frames(gradient_frames(), tmp_path / "frames", fps=7)
    assert len(seen) == 1 and seen[0].startswith(".frames.")  # the half-filled temp folder
    assert entries(tmp_path) == []


def test_contact_sheet_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_call(monkeypatch, Image.Image, "save", 1, tmp_path)
    with pytest.raises(RuntimeError):
        contact_sheet(gradient_frames(), tmp_path / "sheet.png")
    assert entries(tmp_path) == []


def test_outputs_get_umask_modes_not_temp_modes(tmp_path: Path) -> None:
    """mkstemp/mkdtemp would make 0600/0700 outputs; readers in other groups need the umask's."""
    umask = os.umask(0)
    os.umask(umask)
    file = save_frames(gradient_frames(2), tmp_path / "clip.npy", fps=7)
    folder = save_frames(gradient_frames(2), tmp_path / "frames", fps=7)
    assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_module_does_not_import_torch() -> None:
    code = "import sys, svd_trt.runtime.video; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
