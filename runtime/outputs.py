"""Before a run: the outputs can be written, and writing them loses nothing the user had.

An output may not replace or delete an input (the image, the noise arrays, any file of the
engine directory) nor the other output; its folder must exist or be creatable and be
writable, and its encoder must take the request's size and frame rate: one black frame is
written beside it and removed (the same writer, so libx264's and GIF's limits are its own).
Inputs and outputs are compared as files (os.path.samefile: links and other spellings of a
path included), not as strings. All of this runs before any component does.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import av

from svd_trt.errors import first_line
from svd_trt.output_dir import OutputError
from svd_trt.runtime import video

# The contact sheet stays PNG: lossless, and with no size limit a grid could exceed after the
# run (JPEG stops at 65,535 pixels a side, WebP at 16,383: 25 frames of 4096 are 20,488 wide).
SHEET_SUFFIX = ".png"
# Less free space than this after a failed write with no error code reads as a full disk.
FULL_DISK = 2**20


@dataclass(frozen=True)
class Outputs:
    """Where a run writes: the video (file or PNG folder) and an optional contact sheet."""

    video: Path
    contact_sheet: Path | None = None

    @staticmethod
    def of(out: str | os.PathLike, contact_sheet: str | os.PathLike | None = None) -> Outputs:
        """Check the paths' form (nothing touched on disk): empty, unknown suffix, file where a folder goes."""
        for flag, value in (("--out", out), ("--contact-sheet", contact_sheet)):
            if value is not None and not os.fspath(value).strip():
                raise OutputError(f"{flag} is empty")
        try:
            video.output_kind(out)
        except ValueError as e:
            raise OutputError(str(e)) from None
        sheet = Path(contact_sheet) if contact_sheet is not None else None
        if sheet is not None:
            if sheet.suffix.lower() != SHEET_SUFFIX:
                raise OutputError(f"--contact-sheet must be a .png, got {sheet.name!r}")
            if sheet.is_dir():
                raise OutputError(f"--contact-sheet {sheet} is a directory")
        return Outputs(Path(out), sheet)


def check_outputs(
    outputs: Outputs, inputs: Mapping[str, Path], num_frames: int, fps: float, height: int, width: int
) -> None:
    """Refuse, in one line, outputs that would overwrite an input or each other, or cannot be written.

    `inputs`: label (how the user named it, e.g. --image) -> file; a folder stands for its files.
    """
    written = {"--out": video.files_replaced(outputs.video, num_frames)}
    if outputs.contact_sheet is not None:
        written["--contact-sheet"] = [outputs.contact_sheet]
        if any(_same(outputs.contact_sheet, f) for f in written["--out"]):
            raise OutputError(
                f"--contact-sheet {outputs.contact_sheet} is also where --out {outputs.video} writes"
            )
    for label, path in inputs.items():
        for input_file in _files(path):
            for flag, files in written.items():
                if any(_same(input_file, f) for f in files):
                    raise OutputError(
                        f"{flag} {_shown(flag, outputs)} would overwrite the input {label} {input_file}; "
                        "choose another output path"
                    )
    _probe(outputs, fps, height, width)


def _same(a: Path, b: Path) -> bool:
    """One file under both names (links, relative spellings); two paths that do not exist yet, spelled alike."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return not a.exists() and not b.exists() and a.resolve() == b.resolve()


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file()]
    return [path]


def _shown(flag: str, outputs: Outputs) -> Path:
    return outputs.video if flag == "--out" else outputs.contact_sheet


def _probe(outputs: Outputs, fps: float, height: int, width: int) -> None:
    """Write one frame as the writers will (and remove it): folder, permissions, encoder limits."""
    try:
        video.check_fps(fps)
    except ValueError as e:
        raise OutputError(f"--output-fps: {e}") from None
    try:
        video.probe(outputs.video, fps, height, width)
    except (OSError, ValueError, av.error.FFmpegError) as e:
        raise OutputError(f"cannot write --out {outputs.video}: {describe(e)}") from None
    if outputs.contact_sheet is not None:
        try:
            video.check_writable(outputs.contact_sheet)
        except (OSError, ValueError) as e:
            raise OutputError(
                f"cannot write --contact-sheet {outputs.contact_sheet}: {describe(e)}"
            ) from None


def write_failure(e: OSError, path: Path) -> str:
    """Why writing `path` failed, with the free space there; numpy's short-write error has no errno."""
    reason = describe(e)
    try:
        free = shutil.disk_usage(video.existing_folder(path.parent)).free
    except OSError:
        return reason
    if e.errno is None and free < FULL_DISK:
        reason = f"{os.strerror(errno.ENOSPC)} ({reason})"
    return f"{reason}; {free / 2**20:.1f} MiB free there"


def describe(e: BaseException) -> str:
    """An OS or encoder error as a phrase: its strerror, else its first line."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return first_line(e)
