"""Write generated frames to disk: H.264 mp4, gif, npy, a folder of PNGs, a contact sheet.

Frames are float arrays [F, H, W, 3] in [0, 1], as diffusers returns with
output_type="np". Every writer renders into a temporary sibling of the target and
moves it into place with os.replace, so a failure never leaves a partial output.
Before a run, `output_kind`, `files_replaced` and `probe` say what a path will get, which
files that replaces, and whether the writer can write there at all (runtime/outputs.py).
numpy, Pillow and PyAV only: this module runs on serving machines without torch.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FILE_FORMATS = (".mp4", ".gif", ".npy")  # by suffix; no suffix means a folder of PNGs


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[..., 3] floats in [0, 1] -> uint8 by round(255 x), clipped; uint8 passes through.

    One frame at a time: the float temporaries stay one frame's size, not the clip's
    (the frames are the largest arrays of a run; svd_trt/memory.py counts them).
    """
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.ndim < 4:
        return _frame_to_uint8(frames)
    out = np.empty(frames.shape, np.uint8)
    for i, frame in enumerate(frames):
        out[i] = _frame_to_uint8(frame)
    return out


def _frame_to_uint8(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [F, H, W, 3] with F >= 1, got shape {frames.shape}")
    return frames


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else delete it."""
    tmp = _temp_sibling(path, path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    """An unused hidden name beside `path`: same filesystem, so os.replace is a rename.

    Not mkstemp/mkdtemp: those create 0600/0700 entries, and the rename would carry
    those modes to the output; here the writer creates it under the user's umask.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad H and W up to even by repeating the last row/column: yuv420p halves chroma."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    """H.264 (libx264, yuv420p) in mp4; odd sizes are padded to even by one pixel."""
    pixels = _even(to_uint8(frames))
    _, h, w, _ = pixels.shape
    rate = Fraction(fps).limit_denominator(1001)
    # faststart puts the index first so browsers can play while downloading.
    with av.open(str(path), mode="w", format="mp4", container_options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for image in pixels:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))  # flush the encoder's delayed frames


def write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    """Looping gif; durations are whole milliseconds (players round to 10 ms).

    Pillow merges identical consecutive frames into one longer frame: the timing is
    kept, the frame count is not.
    """
    images = [Image.fromarray(image) for image in to_uint8(frames)]
    duration = max(1, round(1000.0 / fps))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)


def write_npy(frames: np.ndarray, path: Path) -> None:
    """The float32 frames themselves, for exact comparisons."""
    np.save(path, np.asarray(frames, dtype=np.float32), allow_pickle=False)


def _frame_name(i: int, count: int) -> str:
    return f"frame_{i:0{max(3, len(str(count - 1)))}d}.png"


def write_png_dir(frames: np.ndarray, path: Path) -> None:
    """frame_000.png ...: rendered in a temp folder first, then moved in."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot write PNG frames into {path.name!r}: it is a file")
    tmp = _temp_sibling(path)
    tmp.mkdir()
    try:
        names = [_frame_name(i, len(frames)) for i in range(len(frames))]
        for name, image in zip(names, to_uint8(frames)):
            Image.fromarray(image).save(tmp / name, format="PNG")
        _move_frames_into(tmp, path, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_frames_into(tmp: Path, path: Path, names: list[str]) -> None:
    """Rename the whole folder when the target is new; else replace frames one by one."""
    if not path.exists():
        os.replace(tmp, path)
        return
    for name in names:
        os.replace(tmp / name, path / name)
    # Frames left from an earlier, longer clip would read back as part of this one.
    for stale in set(p.name for p in path.glob("frame_*.png")) - set(names):
        (path / stale).unlink()


def output_kind(path: str | os.PathLike) -> str:
    """What `save_frames` writes at `path`: "mp4", "gif", "npy" or "png-dir"; ValueError otherwise."""
    if not os.fspath(path).strip():
        raise ValueError("the output path is empty")
    path = Path(path)
    if path.is_dir():
        return "png-dir"
    if not path.suffix:
        if path.exists():
            raise ValueError(
                f"{path} exists and is not a directory: PNG frames (a path with no suffix) need a folder"
            )
        return "png-dir"
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        formats = ", ".join(FILE_FORMATS)
        raise ValueError(
            f"{path}: unknown output type {suffix!r}; use {formats}, or a folder (no suffix) for PNGs"
        )
    return suffix[1:]


def files_replaced(path: str | os.PathLike, count: int) -> list[Path]:
    """The files saving `count` frames at `path` replaces or deletes (existing or not).

    A file output replaces itself; a PNG folder gets frame_000.png ... and loses the
    frame_*.png an earlier, longer clip left there.
    """
    path = Path(path)
    if output_kind(path) != "png-dir":
        return [path]
    names = {_frame_name(i, count) for i in range(count)}
    if path.is_dir():
        names |= {p.name for p in path.glob("frame_*.png")}
    return sorted(path / name for name in names)


def check_fps(fps: float) -> None:
    """A frame rate every writer encodes: finite, positive, and at least one frame per 1001 s
    (mp4 time bases are limited to that denominator)."""
    if not (math.isfinite(fps) and fps > 0) or Fraction(fps).limit_denominator(1001) == 0:
        raise ValueError(f"frame rate must be a positive finite number of at least 1/1001, got {fps}")


def probe(path: str | os.PathLike, fps: float, height: int, width: int) -> None:
    """Write one black frame of the clip's size the way `save_frames` will, beside `path`, and delete it.

    Before a run: the folder exists or can be made, it is writable, and the encoder takes this
    size and frame rate. Raises what the writer raises (OSError, ValueError, av errors).
    """
    path = Path(path)
    kind = output_kind(path)
    check_fps(fps)
    if kind in ("png-dir", "npy"):  # no encoder to try: a written and removed file is the check
        check_writable(path / "frame.png" if kind == "png-dir" else path)
        return
    tmp = _temp_sibling(existing_folder(path.parent) / path.name, path.suffix)
    try:
        _file_writer(path, fps)(np.zeros((1, height, width, 3), np.uint8), tmp)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike) -> None:
    """A file can be created where `path` will be (its nearest existing folder): made and removed.

    Nothing is created when that fails: missing parent folders are made only at write time.
    """
    path = Path(path)
    probe_file = _temp_sibling(existing_folder(path.parent) / path.name)
    probe_file.write_bytes(b"")
    probe_file.unlink()


def existing_folder(folder: Path) -> Path:
    """The nearest folder of `folder`'s chain that exists; NotADirectoryError if that is a file."""
    folder = folder if str(folder) else Path(".")
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    return folder


def save_frames(frames: np.ndarray, path: str | os.PathLike, fps: float) -> Path:
    """Frames [F, H, W, 3] in [0, 1] -> `path`; the format follows the suffix (.mp4, .gif,
    .npy), and a path with no suffix or an existing directory gets a folder of PNGs."""
    frames, path = _check_frames(frames), Path(path)
    check_fps(fps)
    if output_kind(path) == "png-dir":
        write_png_dir(frames, path)
    else:
        writer = _file_writer(path, fps)
        with _atomic_file(path) as tmp:
            writer(frames, tmp)
    log.info("wrote %d frames to %s", len(frames), path)
    return path


def _file_writer(path: Path, fps: float) -> Callable[[np.ndarray, Path], None]:
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        return lambda frames, tmp: write_mp4(frames, tmp, fps)
    if suffix == ".gif":
        return lambda frames, tmp: write_gif(frames, tmp, fps)
    if suffix == ".npy":
        return write_npy
    formats = ", ".join(FILE_FORMATS)
    raise ValueError(f"cannot write video to {path.name!r}: use {formats}, or a folder (no suffix) for PNGs")


def contact_sheet(
    frames: np.ndarray, path: str | os.PathLike, columns: int | None = None, gap: int = 2
) -> Path:
    """All frames on one PNG grid, row-major, `gap` white pixels apart; columns
    defaults to ceil(sqrt(F)) so the sheet is roughly square."""
    frames, path = to_uint8(_check_frames(frames)), Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"contact sheet must be a .png, got {path.name!r}")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    count, h, w, _ = frames.shape
    columns = min(count, columns or math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    sheet = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(frames):
        top, left = (i // columns) * (h + gap), (i % columns) * (w + gap)
        sheet[top : top + h, left : left + w] = image
    with _atomic_file(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path
