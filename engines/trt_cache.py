"""What makes a TensorRT engine reusable, and where the shared timing cache lives.

An engine is reusable only for the same ONNX bytes (graph and external weights), the
same profile and precision, on the same TensorRT version and GPU. The key hashes all
of them, so a build on another TensorRT or GPU never picks up a foreign engine, and
the runtime refuses one by the platform recorded beside the key. Pure stdlib.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from svd_trt.manifest import ComponentEntry, ManifestError, cache_key, entry_problems, load_manifest
from svd_trt.runtime.trt_runner import Platform

# Bump when the builder settings change (flags, workspace, ...): old engines then rebuild.
# tests/engines/test_tensorrt_build.py pins the flags of each version (BUILDER_FLAGS).
# 1: fp16 / int8 / fp8 builder flags. 2: strongly typed networks, no precision flags.
BUILDER_VERSION = 2


def engine_key(onnx_digest: str, profile: dict[str, Any], precision: str, platform: Platform) -> str:
    """One engine's identity: ONNX bytes (ComponentEntry.digest of its files' records), profile,
    precision, TensorRT version, GPU."""
    payload = {
        "onnx": onnx_digest,
        "profile": profile,
        "precision": precision,
        "platform": dataclasses.asdict(platform),
        "builder": BUILDER_VERSION,
    }
    return cache_key(payload)  # JSON: tuples and lists serialise alike


def cache_dir() -> Path:
    """The user cache directory ($XDG_CACHE_HOME/svd-trt, else ~/.cache/svd-trt)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "svd-trt"


def default_timing_cache(platform: Platform) -> Path:
    """A timing cache per TensorRT version and GPU: TensorRT rejects a cache from another one."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", platform.gpu).strip("-").lower()
    return cache_dir() / f"timing-trt{platform.tensorrt_version}-sm{platform.compute_capability}-{gpu}.cache"


def previous_engines(out: Path) -> dict[str, ComponentEntry]:
    """The entries of an existing TensorRT engine directory at `out` (else none); files unchecked."""
    try:
        manifest = load_manifest(out, check_sizes=False)
    except ManifestError:
        return {}
    return manifest.components if manifest.backend == "tensorrt" else {}


def reusable(out: Path, old: dict[str, ComponentEntry], name: str, key: str) -> ComponentEntry | None:
    """The old entry of `name` when its key equals `key` and its files still hash as recorded."""
    entry = old.get(name)
    if entry is None or entry.key != key or entry_problems(out, name, entry, full=True):
        return None
    return entry
