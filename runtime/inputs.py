"""A generation's conditioning inputs (svd_trt/family.py InputSpec) from what a user gives: image files
(or their bytes, when served) loaded and checked, texts as they are; every problem one line."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svd_trt.options import PipelineError, flag
from svd_trt.runtime.image_preprocess import load_image


def load_inputs(family: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    """{name: PIL image or str} for `family` from {name: path, bytes or str}; defaults filled."""
    out = {}
    for spec in family.inputs:
        value = raw.get(spec.name, spec.default)
        if value is None:
            if spec.required:
                raise PipelineError(f"{family.title} needs {flag(spec.name)}")
            continue
        if spec.kind == "image":
            source = io.BytesIO(value) if isinstance(value, bytes) else Path(value)
            out[spec.name] = load_image(source, name=spec.name if isinstance(value, bytes) else None)
        else:
            out[spec.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def input_paths(family: Any, raw: Mapping[str, Any]) -> dict[str, Path]:
    """The files among the inputs, by flag: what an output must never overwrite."""
    return {flag(s.name): Path(raw[s.name]) for s in family.inputs if s.kind == "image" and raw.get(s.name)}
