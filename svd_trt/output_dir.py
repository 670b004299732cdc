"""Writing a directory this project owns (engines, ONNX files) without losing anything a user had.

`writing(out, protect)` is the one way such a directory is written:
- an `out` that overlaps an input (the snapshot it is built from) is refused;
- one writer at a time: an flock on `.NAME.lock` beside `out`; a second writer is refused;
- staging directories a killed writer left beside `out` are removed (holding the lock proves
  nobody is still writing them);
- an existing `out` is replaced only when it is a directory this project wrote holding nothing
  else: the files its manifest lists, the manifest, check's `accuracy/` report. One whose
  manifest cannot be read (another format version, damaged) only with `force`, and then only
  if every entry has an engine file's name. Anything else, never: its files are the user's;
- the new directory is assembled beside `out` and swapped in whole, so an interrupted build
  never leaves a directory that looks complete.
Every refusal is one line (OutputError) before any work.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from svd_trt.errors import UserError
from svd_trt.manifest import MANIFEST_NAME, ManifestError, load_manifest

REPORT_DIR = "accuracy"  # svd-export check's default report folder inside an engine directory
ENGINE_FILE_PATTERNS = ("*.onnx", "*.onnx.data", "*.engine", MANIFEST_NAME, REPORT_DIR)


class OutputError(UserError):
    """An output path that cannot be written safely (an engine directory, a video, a contact sheet): one line."""


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_target(out: Path, protect: Sequence[Path] = (), force: bool = False) -> None:
    """OutputError unless `out` may be (re)written as an engine directory (see the module doc)."""
    for path in protect:
        if _overlap(out, Path(path)):
            raise OutputError(f"{out}: overlaps {path}, which this build reads; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another --out")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    try:
        manifest = load_manifest(out, check_sizes=False)
    except ManifestError as e:
        if force and _ours(out) and all(_engine_name(n) for n in entries):
            return
        if _ours(out):
            raise OutputError(f"{out}: an engine directory that cannot be read ({e}); --force replaces it") from None
        raise OutputError(
            f"{out}: not an engine directory written by svd-trt (it holds {len(entries)} other entries); "
            "choose another --out"
        ) from None
    owned = {MANIFEST_NAME, REPORT_DIR} | {n for c in manifest.components.values() for n in c.file_names(out)}
    foreign = sorted(entries - owned)
    if foreign:
        raise OutputError(
            f"{out}: holds {foreign[0]!r}, which svd-trt did not write; move it or choose another --out"
        )


def _ours(out: Path) -> bool:
    try:
        return "svd_trt_version" in json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False


def _engine_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in ENGINE_FILE_PATTERNS)


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out` exclusively; OutputError if another writer holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = path.read_text().strip() or "another process"
            raise OutputError(f"{out}: another build is writing it ({holder}); wait for it or choose another --out") from None
        # The holder before us may have unlinked the file between our open and our lock.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def remove_stale(out: Path) -> list[Path]:
    """Staging and trash directories a killed writer left beside `out`; call under its lock."""
    stale = [*out.parent.glob(f".{out.name}.partial-*"), *out.parent.glob(f".{out.name}.old-*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextlib.contextmanager
def writing(out: str | Path, protect: Sequence[Path] = (), force: bool = False) -> Iterator[Path]:
    """A stage directory beside `out`, swapped in whole when the block succeeds (module doc)."""
    out = Path(out)
    with lock(out):
        check_target(out, protect, force)
        remove_stale(out)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            yield stage
            _swap_in(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (no bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _relax_permissions(directory: Path) -> None:
    """mkdtemp makes 0700 directories and onnx writes 0600 data files; an engine directory is
    shared like any build output, so give it the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` by the complete `stage` directory; the old one is removed after."""
    if not (stage / MANIFEST_NAME).exists():
        raise RuntimeError(f"{stage}: no manifest; refusing to install an incomplete directory")
    _relax_permissions(stage)
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(trash)
    stage.rename(out)
    if trash:
        shutil.rmtree(trash, ignore_errors=True)
