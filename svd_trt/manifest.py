"""The engine directory's manifest: everything the runtime needs, nothing from the snapshot.

`manifest.json` holds the model family and its config (everything the runtime needs of the
snapshot: scheduler, VAE constants, ...), the request sizes the directory serves (`limits`, by the
family's option names; TensorRT profiles are built from them), per component its file, precision,
cache key and I/O (names, symbolic dims, dtypes), and the other files the runtime reads (`assets`,
e.g. a tokenizer). Written last by export and engine builds, so a directory without it is
incomplete by definition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svd_trt import __version__
from svd_trt.errors import UserError
from svd_trt.family import FamilyError, family_named
from svd_trt.spec import ComponentSpec, Span

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 3  # 3: the family and the assets
# A quantized directory (calibration/quantize.py): the component is the int8 / fp8 Q/DQ file and
# `<name>_float` the float one it was quantized from, kept for comparisons and re-quantizing.
FLOAT_SUFFIX = "_float"


def float_twin(name: str) -> str:
    """The manifest name of a quantized component's float original."""
    return name + FLOAT_SUFFIX


def spec_name(name: str) -> str:
    """The component (spec) a manifest entry is of: `unet_float` is the UNet's."""
    return name.removesuffix(FLOAT_SUFFIX)


class ManifestError(UserError):
    """An engine directory that cannot be used; the message is one line."""


@dataclass(frozen=True)
class ComponentEntry:
    """One engine file of the directory."""

    file: str
    precision: str
    key: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific: profiles, TRT version, GPU
    # every file the component reads (the graph and its external data): name -> {size, sha256}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def describe(spec: ComponentSpec, file: str, precision: str, key: str, **extra: Any) -> ComponentEntry:
        def io(ts):
            return {t.name: {"dims": list(t.dims), "dtype": t.dtype(precision).name} for t in ts}

        return ComponentEntry(file, precision, key, io(spec.inputs), io(spec.outputs), dict(extra))

    def file_names(self, directory: str | Path) -> list[str]:
        """The graph or engine file and, where it exists or is recorded, its external data."""
        data = data_file(self.file)
        return [self.file, data] if data in self.files or (Path(directory) / data).exists() else [self.file]

    def recorded(self, directory: str | Path) -> ComponentEntry:
        """This entry with the sizes and hashes of its files as they are in `directory` now."""
        root = Path(directory)
        return dataclasses.replace(self, files={n: file_record(root / n) for n in self.file_names(root)})

    def digest(self) -> str:
        """One hash of every recorded file (names and contents): what a derived artefact depends on
        (an engine, a quantized UNet), read from the records, never by hashing the files again."""
        if not self.files:
            raise ManifestError(f"{self.file}: no file records to derive a hash from; rebuild")
        return records_digest(self.files)


def data_file(name: str) -> str:
    """The external-weights file of an ONNX graph past 2 GB (or any name pattern): `<name>.data`."""
    return name + ".data"


def records_digest(records: dict[str, dict[str, Any]]) -> str:
    """One sha256 over file records (name -> {size, sha256}): the hash of a set of files."""
    text = json.dumps(sorted((n, r["sha256"]) for n, r in records.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(payload: dict[str, Any]) -> str:
    """A component's key (ComponentEntry.key) from what it depends on: reused only when equal."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def files_digest(paths: list[Path]) -> str:
    """records_digest of files on disk (a snapshot's weights), each hashed once."""
    return records_digest({p.name: file_record(p) for p in paths})


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, streamed (the UNet's weights are GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def entry_problems(root: Path, name: str, entry: ComponentEntry, full: bool = False) -> list[str]:
    """Why component `name`'s files in `root` are not the ones the manifest recorded (one line each)."""
    return record_problems(root, f"component {name}", entry.files or {entry.file: None}, full)


def record_problems(root: Path, owner: str, records: dict[str, dict[str, Any] | None], full: bool = False) -> list[str]:
    """Why files in `root` are not the ones recorded (name -> {size, sha256}, or None: only that it
    exists), one line each. Sizes are cheap and checked on every load; `full` also compares the
    sha256 of every byte."""
    problems = []
    for file, record in records.items():
        path = root / file
        if not path.is_file():
            problems.append(f"{path}: missing file of {owner}")
        elif record is not None and path.stat().st_size != record["size"]:
            size = path.stat().st_size
            problems.append(
                f"{path}: {size} bytes, the manifest recorded {record['size']} (truncated or replaced); "
                f"rebuild the engines"
            )
        elif full and record is not None and sha256_file(path) != record["sha256"]:
            problems.append(f"{path}: contents changed since the build (sha256 differs); rebuild the engines")
    return problems


def manifest_problems(root: Path, manifest: Manifest, full: bool = False) -> list[str]:
    """Every file the manifest records that is missing or differs, components then assets."""
    problems = []
    for name, entry in manifest.components.items():
        problems += entry_problems(root, name, entry, full)
    return problems + record_problems(root, "the engine directory", manifest.assets, full)


def verify(directory: str | Path) -> tuple[list[str], int]:
    """Every problem of an engine directory, every byte hashed, and the number of files checked
    (svd-export verify). A manifest of this format that cannot be used is a problem too; a
    directory without one, or of another format version, is a ManifestError: nothing to verify."""
    root = Path(directory)
    try:
        manifest = load_manifest(root, check_sizes=False)
    except ManifestError as e:
        if _current_format(root / MANIFEST_NAME):
            return [str(e)], 0
        raise
    count = sum(len(e.files) or 1 for e in manifest.components.values()) + len(manifest.assets)
    return manifest_problems(root, manifest, full=True), count


def _current_format(path: Path) -> bool:
    """A manifest file that is damaged JSON, or JSON of this format version."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format_version") == FORMAT_VERSION
    except (ValueError, AttributeError):
        return True


@dataclass(frozen=True)
class Manifest:
    """`backend` runs the files by default (ONNX files: onnxruntime); `target` is whom the graphs
    are made for: an ONNX directory for TensorRT holds the exact files its engines are built from
    (strongly typed fp16, standard attention ops), which ONNX Runtime runs here too."""

    backend: str
    family: str  # svd_trt.family.family_named: whose config, specs and pipeline
    model: Any  # the family's config
    components: dict[str, ComponentEntry]
    source: str = ""
    limits: dict[str, Span] = field(default_factory=dict)  # the family's limit_names -> served range
    target: str = ""  # "" = the backend
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> {size, sha256}
    svd_trt_version: str = __version__
    format_version: int = FORMAT_VERSION

    def specs(self) -> dict[str, ComponentSpec]:
        return family_named(self.family).component_specs(self.model)

    def owned_files(self, directory: str | Path) -> set[str]:
        """Every file of the directory this manifest accounts for (itself included)."""
        components = {n for c in self.components.values() for n in c.file_names(directory)}
        return {MANIFEST_NAME, *components, *self.assets}

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2, default=list) + "\n"

    def save(self, directory: str | Path) -> Path:
        """Written last into a stage (svd_trt/output_dir.py), on the disk before its name exists."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Manifest:
        family = family_named(d["family"])
        return Manifest(
            backend=d["backend"],
            family=family.name,
            model=family.config_from_dict(d["model"]),
            components={k: ComponentEntry(**v) for k, v in d["components"].items()},
            source=d.get("source", ""),
            limits={k: Span(**v) for k, v in d.get("limits", {}).items()},
            target=d.get("target", ""),
            assets=dict(d.get("assets", {})),
            svd_trt_version=d["svd_trt_version"],
            format_version=d["format_version"],
        )


def load_manifest(directory: str | Path, check_sizes: bool = True) -> Manifest:
    """The manifest of an engine directory; every problem is a one-line ManifestError.

    Every component the model needs must be listed, and its files must exist with the sizes the
    build recorded (cheap: a truncated or replaced file is caught on every load; `verify` hashes).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ManifestError(f"{root}: engine directory not found")
    path = root / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(
            f"{path}: missing; not a complete engine directory (run svd-export build-engines)"
        )
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    if d.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format version {d.get('format_version')} is not {FORMAT_VERSION}; rebuild"
        )
    try:
        manifest = Manifest.from_dict(d)
    except (KeyError, TypeError) as e:
        raise ManifestError(f"{path}: malformed ({type(e).__name__}: {e})") from None
    except FamilyError as e:
        raise ManifestError(f"{path}: {e}") from None
    missing = [name for name in manifest.specs() if name not in manifest.components]
    if missing:
        raise ManifestError(f"{path}: lists no {missing[0]} component; rebuild the engines")
    problems = manifest_problems(root, manifest) if check_sizes else []
    if problems:
        raise ManifestError(problems[0])
    return manifest
