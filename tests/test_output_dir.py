"""Nothing a user had is lost, and a damaged engine directory is never trusted: build-engines refuses
an --out it did not write, rebuilds only what changed, one writer at a time; the manifest records
every file's size and sha256, loads check sizes, `svd-export verify` and rebuilds check hashes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from svd_trt.engines.cli import main as svd_export
from svd_trt.manifest import FORMAT_VERSION, MANIFEST_NAME, data_file, load_manifest
from svd_trt.output_dir import lock
from svd_trt.runtime.cli import main as svd_trt

IMAGE = str(Path(__file__).resolve().parents[1] / "runtime" / "assets" / "coffee.jpg")
COMPONENTS = ("image_encoder", "vae_encoder", "unet", "vae_decoder")
SMALL_RUN = ["--num-frames", "2", "--height", "32", "--width", "32", "--num-inference-steps", "1"]


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def build(snapshot, out, *extra: str):
    return CliRunner().invoke(svd_export, ["build-engines", "--model", str(snapshot), "--out", str(out), *extra])


def inodes(engines: Path) -> dict[str, int]:
    """A reused component is hard-linked into the new directory: same inode; a rebuilt one is new."""
    return {name: (engines / f"{name}.onnx").stat().st_ino for name in COMPONENTS}


def infer(engines, tmp_path):
    args = ["infer", "--engines", str(engines), "--image", IMAGE, "--out", str(tmp_path / "v.npy"), "--no-progress"]
    return CliRunner().invoke(svd_trt, [*args, *SMALL_RUN])


@pytest.fixture()
def engines(tiny_engines, tmp_path) -> Path:
    """A private copy of the tiny ONNX Runtime engine directory."""
    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    return out


# --- what build-engines may replace ------------------------------------------------------------


def test_a_folder_of_user_files_is_never_replaced(tiny_snapshot, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    one_line_error(build(tiny_snapshot, out), "not an engine directory", "choose another --out")
    one_line_error(build(tiny_snapshot, out, "--force"), "not an engine directory")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging or lock left


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_out_never_overlaps_the_model(tiny_snapshot, tmp_path, where):
    snapshot = tmp_path / "snap"
    shutil.copytree(tiny_snapshot, snapshot)
    before = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*"))
    out = {"same": snapshot, "inside": snapshot / "engines", "around": tmp_path}[where]
    one_line_error(build(snapshot, out), "overlaps", str(snapshot))
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*")) == before


def test_an_existing_file_is_not_replaced(tiny_snapshot, tmp_path):
    out = tmp_path / "engines"
    out.write_text("not a directory")
    one_line_error(build(tiny_snapshot, out), "is not a directory")
    assert out.read_text() == "not a directory"


def test_our_engine_directory_is_rebuilt_in_place_with_reuse(tiny_snapshot, engines):
    before = inodes(engines)
    result = build(tiny_snapshot, engines)
    assert result.exit_code == 0, result.output + result.stderr
    assert inodes(engines) == before


def test_a_user_file_inside_an_engine_directory_blocks_the_rebuild(tiny_snapshot, engines):
    (engines / "notes.txt").write_text("mine")
    one_line_error(build(tiny_snapshot, engines), "'notes.txt'", "did not write")
    assert (engines / "notes.txt").read_text() == "mine" and (engines / "unet.onnx").exists()


def test_what_an_older_killed_quantization_left_inside_is_cleared(tiny_snapshot, engines):
    """Before quantization went through the writer, a killed one left these inside the directory."""
    (engines / ".unet.int8.onnx.partial").write_bytes(b"half")
    (engines / ".unet.prepared.onnx").write_bytes(b"half")
    (engines / ".unet-int8-modelopt-x1").mkdir()
    result = build(tiny_snapshot, engines)
    assert result.exit_code == 0, result.stderr
    assert not [p.name for p in engines.iterdir() if p.name.startswith(".")]


def test_an_unreadable_manifest_of_ours_needs_force(tiny_snapshot, engines):
    manifest = json.loads((engines / MANIFEST_NAME).read_text())
    (engines / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 1}))
    one_line_error(build(tiny_snapshot, engines), "cannot be read", "--force")
    result = build(tiny_snapshot, engines, "--force")
    assert result.exit_code == 0, result.stderr
    assert load_manifest(engines).format_version != 1


def test_one_writer_at_a_time_and_stale_stages_are_removed(tiny_snapshot, engines):
    stale = engines.with_name(f".{engines.name}.partial-killed")
    stale.mkdir()
    (stale / "unet.onnx").write_bytes(b"half")
    with lock(engines):
        one_line_error(build(tiny_snapshot, engines), "another build is writing it", f"pid {os.getpid()}")
    assert stale.exists()  # the refused build touched nothing
    assert build(tiny_snapshot, engines).exit_code == 0
    assert not stale.exists()


def test_a_second_process_is_refused_while_one_builds(tiny_snapshot, engines, tmp_path):
    """Two real processes: the lock is an flock, held across processes."""
    code = (
        "import sys, time; from pathlib import Path; from svd_trt.output_dir import lock\n"
        f"with lock(Path({str(engines)!r})):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(build(tiny_snapshot, engines), "another build is writing it")
    finally:
        holder.kill()
        holder.wait()


# --- damaged directories -------------------------------------------------------------------------


def test_manifest_records_size_and_sha256_of_every_file(engines):
    manifest = load_manifest(engines)
    for entry in manifest.components.values():
        assert entry.file in entry.files
        for name, record in entry.files.items():
            assert record["size"] == (engines / name).stat().st_size and len(record["sha256"]) == 64


def _external(engines: Path, name: str) -> Path:
    """Re-save component `name` with its weights in `<file>.data` and record the new files."""
    path = engines / f"{name}.onnx"
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, location=data_file(path.name), size_threshold=0)
    manifest = load_manifest(engines, check_sizes=False)
    entry = manifest.components[name]
    manifest.components[name] = dataclasses.replace(entry, files={}).recorded(engines)
    manifest.save(engines)
    return path.with_name(data_file(path.name))


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda e: (e / "unet.onnx").write_bytes((e / "unet.onnx").read_bytes()[:1000]), ["unet.onnx", "truncated"]),
        (lambda e: (e / "unet.onnx").write_bytes(b""), ["unet.onnx", "0 bytes"]),
        (lambda e: (e / "vae_decoder.onnx").unlink(), ["vae_decoder.onnx", "missing"]),
        (lambda e: _external(e, "unet").unlink(), ["unet.onnx.data", "missing"]),
        (lambda e: (lambda d: d.write_bytes(d.read_bytes()[:-8]))(_external(e, "unet")), ["unet.onnx.data", "truncated"]),
        (lambda e: (lambda p: p.write_bytes(bytes(p.stat().st_size)))(e / "unet.onnx"), ["unet.onnx", "cannot load"]),
    ],
    ids=["truncated", "empty", "missing", "missing-data", "truncated-data", "garbage-same-size"],
)
def test_damaged_files_are_one_line_errors(engines, tmp_path, damage, words):
    damage(engines)
    one_line_error(infer(engines, tmp_path), *words)
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["components"]["unet"].update(file="unet-old.onnx", files={}), ["unet-old.onnx", "missing"]),
        (lambda m: m["components"].pop("vae_encoder"), ["lists no vae_encoder"]),
        (lambda m: m.pop("components"), ["malformed"]),
    ],
    ids=["wrong-file", "no-component", "malformed"],
)
def test_a_wrong_manifest_is_one_line(engines, tmp_path, edit, words):
    manifest = json.loads((engines / MANIFEST_NAME).read_text())
    edit(manifest)
    (engines / MANIFEST_NAME).write_text(json.dumps(manifest))
    one_line_error(infer(engines, tmp_path), *words)


def _flip_a_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last initializer: same size, still a valid graph
    path.write_bytes(bytes(data))


def verify(engines: Path):
    return CliRunner().invoke(svd_export, ["verify", "--engines", str(engines)])


def test_verify_hashes_every_byte(engines):
    ok = verify(engines)
    assert ok.exit_code == 0 and "files match the manifest" in ok.output
    _flip_a_weight_byte(engines / "unet.onnx")
    bad = verify(engines)
    assert bad.exit_code == 1  # damage found
    lines = bad.stderr.strip().splitlines()
    assert "unet.onnx: contents changed" in lines[0] and lines[-1].startswith("Error: ") and len(lines) == 2


@pytest.mark.parametrize(
    "damage, code",
    [
        (lambda e: (e / "vae_decoder.onnx").unlink(), 1),
        (lambda e: (e / MANIFEST_NAME).write_text("{not json"), 1),
        (lambda e: (e / MANIFEST_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION, "backend": "x"})), 1),
        (lambda e: (e / MANIFEST_NAME).unlink(), 2),  # not an engine directory: nothing to verify
        (lambda e: shutil.rmtree(e), 2),
        (lambda e: (e / MANIFEST_NAME).write_text(json.dumps({"format_version": 1})), 2),  # another version
    ],
    ids=["missing-file", "manifest-not-json", "manifest-malformed", "no-manifest", "no-directory", "old-format"],
)
def test_verify_exit_codes_tell_damage_from_usage(engines, damage, code):
    """0 intact, 1 damage found, 2 usage or I/O error: a script can tell them apart."""
    damage(engines)
    result = verify(engines)
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_a_rebuild_redoes_only_the_damaged_component(tiny_snapshot, engines):
    _flip_a_weight_byte(engines / "unet.onnx")
    (engines / "vae_decoder.onnx").write_bytes(b"")
    before = inodes(engines)
    result = build(tiny_snapshot, engines)
    assert result.exit_code == 0, result.stderr
    after = inodes(engines)
    assert {n: before[n] == after[n] for n in COMPONENTS} == {
        "image_encoder": True,
        "vae_encoder": True,
        "unet": False,
        "vae_decoder": False,
    }
    assert CliRunner().invoke(svd_export, ["verify", "--engines", str(engines)]).exit_code == 0
