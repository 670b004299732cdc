"""Quantized vs float UNet in ONNX Runtime on this machine: file sizes and interleaved timings."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from svd_trt.calibration.quantize import FLOAT_UNET
from svd_trt.manifest import ComponentEntry, load_manifest
from svd_trt.runtime.runners import OrtRunner


def file_bytes(engine_dir: str | Path, entry: ComponentEntry) -> int:
    """Size of a component on disk, its external data file included."""
    return sum((Path(engine_dir) / name).stat().st_size for name in entry.file_names(engine_dir))


def unet_entries(engine_dir: str | Path) -> tuple[ComponentEntry, ComponentEntry]:
    """(float, quantized) UNet entries of a quantized engine directory."""
    components = load_manifest(engine_dir).components
    if FLOAT_UNET not in components:
        raise ValueError(f"{engine_dir}: no quantized UNet (run svd-export quantize)")
    return components[FLOAT_UNET], components["unet"]


def sizes(engine_dir: str | Path) -> dict:
    """Bytes of the float and quantized UNet files, and their ratio."""
    f, q = unet_entries(engine_dir)
    fb, qb = file_bytes(engine_dir, f), file_bytes(engine_dir, q)
    return {"float_bytes": fb, "quantized_bytes": qb, "ratio": qb / fb}


def time_unets(
    engine_dir: str | Path, inputs: dict[str, np.ndarray], repeats: int = 7, threads: int | None = None
) -> dict:
    """Median seconds per UNet call, float vs quantized, runs interleaved so load drifts hit both."""
    f, q = unet_entries(engine_dir)
    runners = {
        "float": OrtRunner(Path(engine_dir) / f.file, name="unet_float", threads=threads),
        "quantized": OrtRunner(Path(engine_dir) / q.file, name="unet", threads=threads),
    }
    for r in runners.values():
        r.run(inputs)  # warm-up: first call allocates and picks kernels
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            start = time.perf_counter()
            r.run(inputs)
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "float_s": med["float"],
        "quantized_s": med["quantized"],
        "speedup": med["float"] / med["quantized"],
        "repeats": repeats,
        "threads": runners["float"].session.get_session_options().intra_op_num_threads,
        "input_shape": list(inputs["sample"].shape),
    }
