"""The engine directory's manifest: everything the runtime needs, nothing from the snapshot.

`manifest.json` holds the model config (scheduler, VAE scaling factor, default frame
count, latent channels, CLIP constants), the request sizes the directory serves (`limits`:
frames, height, width, decode chunk; TensorRT profiles are built from them), and per
component its file, precision, cache key and I/O (names, symbolic dims, dtypes). Written
last by export and engine builds, so a directory without it is incomplete by definition.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svd_trt import __version__
from svd_trt.config import SVDConfig
from svd_trt.errors import UserError
from svd_trt.spec import ComponentSpec, Span, component_specs

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
# A quantized directory (calibration/quantize.py): `unet` is the int8 / fp8 Q/DQ file and
# FLOAT_UNET the float UNet it was quantized from, kept for comparisons and re-quantizing.
FLOAT_UNET = "unet_float"
# The request sizes a directory serves, by GenerationOptions field name.
LIMIT_NAMES = ("num_frames", "height", "width", "decode_chunk_size")


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

    @staticmethod
    def describe(spec: ComponentSpec, file: str, precision: str, key: str, **extra: Any) -> ComponentEntry:
        def io(ts):
            return {t.name: {"dims": list(t.dims), "dtype": t.dtype(precision).name} for t in ts}

        return ComponentEntry(file, precision, key, io(spec.inputs), io(spec.outputs), dict(extra))


@dataclass(frozen=True)
class Manifest:
    """`backend` runs the files by default (ONNX files: onnxruntime); `target` is whom the graphs
    are made for: an ONNX directory for TensorRT holds the exact files its engines are built from
    (strongly typed fp16, standard attention ops), which ONNX Runtime runs here too."""

    backend: str
    model: SVDConfig
    components: dict[str, ComponentEntry]
    source: str = ""
    limits: dict[str, Span] = field(default_factory=dict)  # LIMIT_NAMES -> served range
    target: str = ""  # "" = the backend
    svd_trt_version: str = __version__
    format_version: int = FORMAT_VERSION

    def specs(self) -> dict[str, ComponentSpec]:
        return component_specs(self.model)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2, default=list) + "\n"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Manifest:
        model = SVDConfig.from_dict(d["model"])
        comps = {k: ComponentEntry(**v) for k, v in d["components"].items()}
        limits = {k: Span(**v) for k, v in d.get("limits", {}).items()}
        return Manifest(
            d["backend"],
            model,
            comps,
            d.get("source", ""),
            limits,
            d.get("target", ""),
            d["svd_trt_version"],
            d["format_version"],
        )


def load_manifest(directory: str | Path) -> Manifest:
    """The manifest of an engine directory; every problem is a one-line ManifestError."""
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
    for name, entry in manifest.components.items():
        if not (root / entry.file).exists():
            raise ManifestError(f"{root / entry.file}: missing file for component {name}")
    return manifest
