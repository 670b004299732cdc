"""The calibration directory on disk: reading it back, its split, and ONNX Runtime's data reader.

Format (version 1; calibration/README.md has the full description):
- `step-NNNNN.npz`, one per recorded UNet call, holding the UNet's inputs by their names
  (svd_trt/spec.py) as float32.
- `index.json`: the input names (`inputs`), capture options, the runs (image, seed, motion bucket, noise aug, fps,
  split), the size cap and whether it subsampled, and per sample its file plus that
  metadata and its step index and sigma.
numpy only: the runtime side can read calibration data without onnx.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from svd_trt.errors import UserError

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("all", "calibration", "held_out")


class CalibrationDataError(UserError):
    """A calibration directory that cannot be used; the message is one line."""


def load_index(directory: str | Path) -> dict:
    """index.json of a calibration directory, checked for its format version."""
    path = Path(directory) / INDEX_NAME
    if not path.exists():
        raise CalibrationDataError(f"{path}: missing; not a calibration directory (run svd-export calibrate)")
    index = json.loads(path.read_text())
    if index.get("format_version") != FORMAT_VERSION:
        raise CalibrationDataError(
            f"{path}: format version {index.get('format_version')} is not {FORMAT_VERSION}"
        )
    return index


def select(index: dict, split: str = "all") -> list[dict]:
    """The index entries of one split: `calibration` (ranges), `held_out` (accuracy) or `all`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return [e for e in index["samples"] if split == "all" or e["split"] == split]


def load_sample(directory: str | Path, entry: dict) -> dict[str, np.ndarray]:
    """One recorded UNet call: its inputs by name, float32."""
    with np.load(Path(directory) / entry["file"]) as z:
        return {k: z[k] for k in z.files}


def load_calibration(directory: str | Path, split: str = "all") -> list[dict[str, np.ndarray]]:
    """Every recorded UNet call of `split`, in capture order."""
    index = load_index(directory)
    return [load_sample(directory, e) for e in select(index, split)]
