"""Full-size (real SVD-XT shapes) random checkpoint: write, load strictly, export, run one UNet step.

    .venv/bin/python scripts/full_size_check.py --work /tmp/full [--variant fp16] [--json out.json]

Prints parameter counts, file sizes and times; docs/export.md records a run. Needs ~20 GB of
RAM (the fp32 UNet is 6.1 GB, and the exporter holds a second copy while serialising).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from svd_trt.export.checkpoint import parameter_count
from svd_trt.export.onnx_export import build_onnx_dir
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.port.checkpoint import load_component
from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint
from svd_trt.families.svd.spec import component_specs
from svd_trt.runtime.runners import OrtRunner


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _sizes(directory: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 1e9, 3) for p in sorted(directory.iterdir()) if p.is_file()}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--variant", choices=["fp32", "fp16"], default="fp16")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cfg = preset("full")
    snap, engines = args.work / "svd-xt-random", args.work / "engines"
    variant = None if args.variant == "fp32" else "fp16"
    result: dict = {}
    if not (snap / "model_index.json").exists():
        _, result["write_checkpoint_s"] = _timed(write_random_checkpoint, snap, cfg, variant)
    params = {}
    for name in ("unet", "vae", "image_encoder"):
        module, seconds = _timed(load_component, snap, name, cfg, torch.float16)
        params[name] = parameter_count(module)
        result[f"load_{name}_s"] = round(seconds, 1)
        del module
        gc.collect()
    result["parameters"] = params
    times: dict[str, float] = {}
    _, result["export_s"] = _timed(
        build_onnx_dir, snap, engines, on_component=lambda n, s, t: times.update({n: round(t, 1)})
    )
    result["export_component_s"] = times
    result["onnx_files_gb"] = _sizes(engines)
    result["unet_step"] = _one_unet_step(engines, cfg)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _one_unet_step(engines: Path, cfg) -> dict:
    """One UNet call in ONNX Runtime at a small latent size (B=2 CFG, 2 frames, 16x24 latents)."""
    spec = component_specs(cfg)["unet"]
    sizes = {"B": 2, "F": 2, "h": 16, "w": 24}
    inputs = spec.sample_inputs(sizes, np.random.default_rng(0))
    runner, load_s = _timed(OrtRunner, engines / spec.onnx_file)
    out, run_s = _timed(runner.run, inputs)
    pred = out["noise_pred"]
    del runner
    gc.collect()
    unet = load_component(engines.parent / "svd-xt-random", "unet", cfg, torch.float32)
    with torch.no_grad():
        ref = unet(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    return {
        "rel_err_vs_port_fp32": float(np.abs(pred - ref).max() / np.abs(ref).max()),
        "session_load_s": round(load_s, 1),
        "run_s": round(run_s, 2),
        "shape": list(pred.shape),
        "finite": bool(np.isfinite(pred).all()),
        "std": float(pred.std()),
    }


if __name__ == "__main__":
    main()
