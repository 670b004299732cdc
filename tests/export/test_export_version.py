"""EXPORT_VERSION and QUANTIZE_VERSION follow the code they version, as BUILDER_VERSION follows the
builder flags (tests/engines/test_tensorrt_build.py): a graph or quantized UNet written by older
code must not be reused after an upgrade, so changing that code fails here until the version is
bumped and the new fingerprint recorded."""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import pytest

from svd_trt.calibration.quantize import QUANTIZE_SOURCES, QUANTIZE_VERSION
from svd_trt.export.onnx_export import EXPORT_SOURCES, EXPORT_VERSION
from svd_trt.families.ltx.family import LTX
from svd_trt.families.svd.family import SVD

ROOT = Path(__file__).resolve().parents[2]
# The fingerprints are of this Python's syntax trees (ast.unparse spells a few constructs
# differently across versions): recorded with CI's.
FINGERPRINT_PYTHON = (3, 11)
# Append-only, one per version: the code fingerprint of EXPORT_SOURCES / QUANTIZE_SOURCES.
EXPORT_CODE = {
    1: "60380f013666940c",  # fp32 islands, standard or contrib attention by target
    2: "5ba9ab89e7615cc6",  # the family in the key; shared port layers; diffusers' timestep-embedding order
}
SVD_PORT_CODE = {1: "cb6cd16e1740f4c7"}  # CLIP, UNet, temporal VAE as of the family split
LTX_PORT_CODE = {
    1: "f3d4bb91c971cfa6",  # T5, DiT, causal VAE: the first LTX port
    2: "cbcff9cf22c80d80",  # VAE depth-to-space one factor at a time, unpatchify order in conv_out
}
QUANTIZE_CODE = {
    1: "1c5a02cc53d79770",  # ONNX Runtime's quantize_static; Model Optimizer answered from fused-attention ranges
    2: "0e21748cf2994ff8",  # TensorRT UNets' unquantized remainder fp16 (Q/DQ transplanted)
}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(sources: tuple[str, ...]) -> str:
    """sha256 over each module's code without comments, docstrings or formatting."""
    h = hashlib.sha256()
    for rel in sources:
        tree = _without_docstrings(ast.parse((ROOT / rel).read_text()))
        h.update(f"{rel}\n{ast.unparse(tree)}\n".encode())
    return h.hexdigest()[:16]


needs_recorded_python = pytest.mark.skipif(
    sys.version_info[:2] != FINGERPRINT_PYTHON, reason=f"fingerprints recorded with Python {FINGERPRINT_PYTHON}"
)


@needs_recorded_python
@pytest.mark.parametrize(
    "name, version, sources, recorded, where",
    [
        ("EXPORT_VERSION", EXPORT_VERSION, EXPORT_SOURCES, EXPORT_CODE, "export/onnx_export.py"),
        ("QUANTIZE_VERSION", QUANTIZE_VERSION, QUANTIZE_SOURCES, QUANTIZE_CODE, "calibration/quantize.py"),
        ("SVD.export_version", SVD.export_version, SVD.port_sources(), SVD_PORT_CODE, "families/svd/family.py"),
        ("LTX.export_version", LTX.export_version, LTX.port_sources(), LTX_PORT_CODE, "families/ltx/family.py"),
    ],
    ids=["export", "quantize", "svd-port", "ltx-port"],
)
def test_the_version_tracks_the_code(name, version, sources, recorded, where):
    assert list(recorded) == list(range(1, version + 1)), "one fingerprint per version"
    assert len(set(recorded.values())) == len(recorded), "each version has its own code"
    now = code_fingerprint(sources)
    assert now == recorded[version], (
        f"the code of {name} changed: bump {name} in {where} and append {now!r} to this test's record"
    )


def test_the_fingerprint_sees_code_and_ignores_comments(tmp_path, monkeypatch):
    """The guard above is not blind, nor tripped by a comment or a docstring."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "m.py"
    module.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    base = code_fingerprint(("m.py",))
    module.write_text('"""Other doc."""\n\n\ndef f(x):\n    # a comment\n    return x+1\n')
    assert code_fingerprint(("m.py",)) == base
    module.write_text('"""Doc."""\n\ndef f(x):\n    return x + 2\n')
    assert code_fingerprint(("m.py",)) != base


def test_every_listed_source_exists():
    for rel in EXPORT_SOURCES + QUANTIZE_SOURCES + SVD.port_sources() + LTX.port_sources():
        assert (ROOT / rel).is_file(), rel
