"""Peak memory of the Model Optimizer quantization (calibration/modelopt_quantize.py) by model and shape.

    .venv/bin/python scripts/modelopt_memory.py --width 5 --frames 25 --height 576 --width-px 1024 --out DIR

A random checkpoint with SVD-XT's UNet layout at 1/--width of its channels (--width 1 is
SVD-XT itself, 6.1 GB of fp32 weights; the CLIP and VAE are the `small` ones, which the
UNet measurement does not involve), its TensorRT ONNX directory, and synthetic
calibration inputs at the given shape (batch 2, as classifier-free guidance records
them; standard normal values, which do not matter for memory). Then, each in its
own process so each peak is its own: the full-size statistics pass alone (the fused-graph
ONNX Runtime run) and the whole quantization. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from svd_trt.calibration.dataset import FORMAT_VERSION, INDEX_NAME
from svd_trt.families.svd.config import SVDConfig, preset
from svd_trt.families.svd.spec import DEFAULT_HEIGHT, DEFAULT_WIDTH

log = logging.getLogger("modelopt_memory")


def config(width: int) -> SVDConfig:
    """SVD-XT's UNet at 1/width of its channels; heads of 32 channels below full width (64 at it)."""
    small = preset("small")
    full = SVDConfig().unet
    channels = tuple(c // width for c in full.block_out_channels)
    heads = tuple(max(1, c // 64) if width == 1 else max(1, c // 32) for c in channels)
    unet = dataclasses.replace(full, block_out_channels=channels, num_attention_heads=heads)
    unet = dataclasses.replace(unet, cross_attention_dim=small.clip.projection_dim)
    return dataclasses.replace(small, unet=unet)


def synthetic_calibration(out: Path, samples: int, frames: int, height: int, width: int, dim: int) -> Path:
    """A calibration directory (format 1) of `samples` UNet calls at the given shape."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    entries, names = [], []
    for i in range(samples):
        sigma = float(np.exp(rng.uniform(np.log(0.002), np.log(700))))
        x = {
            "sample": rng.standard_normal((2, frames, 8, height // 8, width // 8), np.float32),
            "timestep": np.full(2, 0.25 * np.log(sigma), np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 1, dim), np.float32),
            "added_time_ids": np.array([[6, 127, 0.02]] * 2, np.float32),
        }
        name = f"step-{i:05d}.npz"
        np.savez(out / name, **x)
        names = list(x)
        entries.append({"file": name, "split": "calibration", "run": 0, "step": i, "sigma": sigma})
    index = {
        "format_version": FORMAT_VERSION,
        "inputs": names,
        "options": {},
        "runs": [],
        "samples": entries,
    }
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return out


def peak_of(code: str) -> dict:
    """Run `code` in a fresh interpreter; its peak RSS (it or its children) and wall time."""
    wrapper = code + (
        "\nimport resource, json\n"
        "print(json.dumps({'peak': max(resource.getrusage(r).ru_maxrss for r in "
        "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024}))\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True, text=True)
    sys.stderr.write(out.stderr[-3000:])
    return {
        "peak_rss_bytes": json.loads(out.stdout.splitlines()[-1])["peak"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=int, default=5, help="Channels are SVD-XT's / this.")
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    p.add_argument("--width-px", type=int, default=DEFAULT_WIDTH)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--stats-only", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from svd_trt.export.onnx_export import build_onnx_dir
    from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

    cfg = config(args.width)
    snapshot, onnx_dir = args.out / f"svd-xt-width-1-{args.width}", args.out / f"onnx-width-1-{args.width}"
    if not (snapshot / "model_index.json").exists():
        write_random_checkpoint(snapshot, cfg, None, 0)
    build_onnx_dir(snapshot, onnx_dir, "tensorrt", {"unet": "fp32"})
    shape = f"{args.frames}x{args.height}x{args.width_px}"
    calib = args.out / f"calibration-{shape}"
    shutil.rmtree(calib, ignore_errors=True)
    synthetic_calibration(
        calib, args.samples, args.frames, args.height, args.width_px, cfg.clip.projection_dim
    )
    unet_bytes = sum(f.stat().st_size for f in onnx_dir.glob("unet.onnx*"))
    stats = peak_of(
        "from pathlib import Path\n"
        "from svd_trt.calibration.modelopt_quantize import _stage, full_size_stats\n"
        "from svd_trt.manifest import load_manifest\n"
        "import tempfile, logging\nlogging.basicConfig(level=logging.INFO)\n"
        f"d = Path({str(onnx_dir)!r}); m = load_manifest(d)\n"
        "work = Path(tempfile.mkdtemp(dir=d, prefix='.stats-'))\n"
        f"job = _stage(d, m.components['unet'], work, Path({str(calib)!r}), 'int8', m.model)\n"
        "s = full_size_stats(job)\nimport shutil; shutil.rmtree(work)\n"
    )
    result = {
        "width": args.width,
        "unet_bytes": unet_bytes,
        "shape": shape,
        "samples": args.samples,
        "stats_pass": stats,
    }
    if not args.stats_only:
        work = args.out / f"quantized-width-1-{args.width}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(onnx_dir, work)
        result["quantize"] = peak_of(
            "from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt\n"
            f"quantize_unet_modelopt({str(work)!r}, {str(calib)!r}, 'int8')\n"
        )
        shutil.rmtree(work)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
