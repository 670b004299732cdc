"""Writing a directory this project owns (engines, ONNX files) without losing anything a user had.

`writing(out, protect)` is the one way such a directory is written, by every step that writes
one (ONNX export, engine builds, both quantizers, `svd-export quantize`, a rebuild that repairs):
- an `out` that overlaps an input (the snapshot, the calibration data) is refused;
- one writer at a time: an flock on `.NAME.lock` beside `out`; a second writer is refused;
- what a killed writer left beside `out` is cleaned up first (holding the lock proves nobody is
  still writing it): its stage is removed, and a previous directory it had moved aside but not
  yet replaced (`.NAME.old-*`, see `_swap_in`) is put back at `out`;
- an existing `out` is replaced only when it is a directory this project wrote holding nothing
  else: the files its manifest lists, the manifest, check's `accuracy/` report. One whose
  manifest cannot be read (another format version, damaged) only with `force`, and then only
  if every entry has an engine file's name. Anything else, never: its files are the user's;
- the new directory is assembled in a stage beside `out` (unchanged files hard-linked from the
  old one), fsynced, and swapped in whole only when its manifest lists exactly what it holds:
  a writer killed at any point leaves the old directory or the new one, never a mix.
Every refusal is one line (OutputError) before any work.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from svd_trt.errors import UserError
from svd_trt.manifest import MANIFEST_NAME, ManifestError, data_file, load_manifest

REPORT_DIR = "accuracy"  # svd-export check's default report folder inside an engine directory
ENGINE_FILE_PATTERNS = ("*.onnx", data_file("*.onnx"), "*.engine", MANIFEST_NAME, REPORT_DIR)
# What quantization left inside a directory before it went through the writer (a killed run of
# an older svd-trt): ours, dropped by the next swap, never a reason to call the directory foreign.
OLD_LEFTOVERS = (".*.onnx.partial", data_file(".*.onnx.partial"), ".*.prepared.onnx", ".unet-*-modelopt-*")
# Crash tests (tests/test_crash_safety.py): the writer SIGKILLs itself at the named point.
KILL_ENV = "SVD_TRT_KILL_AT"


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
    foreign = sorted(n for n in entries - owned_names(manifest, out) if not _matches(n, OLD_LEFTOVERS))
    if foreign:
        raise OutputError(
            f"{out}: holds {foreign[0]!r}, which svd-trt did not write; move it or choose another --out"
        )


def owned_names(manifest, directory: Path) -> set[str]:
    """Every name a directory with this manifest may hold."""
    return {REPORT_DIR} | manifest.owned_files(directory)


def _ours(out: Path) -> bool:
    try:
        return "svd_trt_version" in json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _engine_name(name: str) -> bool:
    return _matches(name, ENGINE_FILE_PATTERNS)



def kill_point(name: str) -> None:
    """A named point of the write sequence; SIGKILL here when KILL_ENV names it (crash tests)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


def _beside(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.{kind}-*"))


def recover(out: Path) -> list[Path]:
    """Undo what a killed writer left beside `out`; call under its lock. Returns what was removed.

    A `.old-*` directory with no `out` is the previous good directory, moved aside by a swap
    that was killed before the new one arrived: it goes back to `out`. With `out` present the
    swap completed and `.old-*` is the replaced directory. Stages and trash are removed."""
    old = _beside(out, "old")
    if old and not out.exists():
        old.pop().rename(out)  # one swap at a time (the lock): at most one is ours to restore
    stale = [*old, *_beside(out, "trash"), *_beside(out, "partial")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextlib.contextmanager
def writing(out: str | Path, protect: Sequence[Path] = (), force: bool = False) -> Iterator[Path]:
    """A stage directory beside `out`, swapped in whole when the block succeeds (module doc)."""
    out = Path(out)
    with lock(out):
        recover(out)
        check_target(out, protect, force)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            kill_point("staged")
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


def carry(src: Path, names: Iterable[str], stage: Path) -> None:
    """Files of the old directory that stay as they are, linked into the stage."""
    for name in names:
        link_or_copy(src / name, stage / name)


def _relax_permissions(directory: Path) -> None:
    """mkdtemp makes 0700 directories and onnx writes 0600 data files; an engine directory is
    shared like any build output, so give it the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk (a rename is durable only after its directory's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_complete(stage: Path) -> None:
    """The stage holds a readable manifest, every file it lists, and nothing else."""
    manifest = load_manifest(stage)  # ManifestError: a missing component or file, a wrong size
    extra = sorted({p.name for p in stage.iterdir()} - owned_names(manifest, stage))
    if extra:
        raise RuntimeError(f"{stage}: holds {extra[0]!r}, which its manifest does not list")


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` by the complete `stage` directory.

    Files and the stage are fsynced first, so the new directory is on the disk before it has
    a name. Two renames follow: `out` to `.NAME.old-PID`, the stage to `out`. Killed between
    them, `out` is missing and `recover` renames `.old-PID` back; after the second, the old
    directory is renamed to `.NAME.trash-PID` (so it is never mistaken for one to restore)
    and removed."""
    _check_complete(stage)
    _relax_permissions(stage)
    for f in stage.iterdir():
        fsync_path(f)
    fsync_path(stage)
    kill_point("synced")
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        kill_point("swapping")
    stage.rename(out)
    fsync_path(out.parent)
    kill_point("swapped")
    if old:
        trash = out.with_name(f".{out.name}.trash-{os.getpid()}")
        old.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
