"""How close an fp16 graph comes to fp16's limit, measured on the graph itself before any GPU.

Every tensor of the ONNX file is marked as an output (Polygraphy's mark-all) and the graph runs
once in ONNX Runtime on the check's inputs; the largest magnitude among its fp16 tensors,
against fp16's largest finite value, is the overflow headroom on those inputs. An inf or NaN in
any fp16 tensor is an overflow that already happened. Random weights say little about trained
ones (their outlier channels are what overflow), so the numbers are only as good as the weights.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svd_trt.manifest import data_file

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass
class ActivationPeak:
    """The fp16 tensors of one run of one graph."""

    max_abs: float  # over every finite element of every fp16 tensor
    tensor: str  # where it is
    fp16_tensors: int
    nonfinite_tensors: int  # fp16 tensors holding inf or NaN: an overflow
    limit: float = FP16_MAX

    @property
    def headroom(self) -> float:
        """How many times larger the peak could grow before it overflows."""
        return self.limit / self.max_abs if self.max_abs > 0 else float("inf")

    @property
    def overflowed(self) -> bool:
        return self.nonfinite_tensors > 0


def fp16_activation_peak(onnx_path: str | Path, feed: dict[str, np.ndarray]) -> ActivationPeak:
    """Run `onnx_path` with every tensor an output; the peak of its fp16 tensors."""
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, OnnxFromPath, SaveOnnx

    from svd_trt.runtime.runners import OrtRunner

    with tempfile.TemporaryDirectory(prefix="svd-trt-activations-") as tmp:
        marked = Path(tmp) / "marked.onnx"
        # Through a file with external data: a marked copy of a >2 GB graph cannot be bytes.
        model = ModifyOutputs(OnnxFromPath(str(onnx_path)), outputs=constants.MARK_ALL)
        SaveOnnx(model, str(marked), external_data_path=data_file(marked.name))()
        outputs = OrtRunner(marked).run(feed)
    peak, where, count, bad = 0.0, "", 0, 0
    for name, value in outputs.items():
        if value.dtype != np.float16 or value.size == 0:
            continue
        count += 1
        values = np.abs(value.astype(np.float32))
        finite = np.isfinite(values)
        bad += int(not finite.all())
        top = float(values[finite].max()) if finite.any() else 0.0
        if top > peak:
            peak, where = top, name
    return ActivationPeak(peak, where, count, bad)
