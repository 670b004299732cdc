"""The Model Optimizer numbers in docs/quantization.md: its INT8 / FP8 UNets vs ONNX Runtime's INT8.

    .venv/bin/python scripts/modelopt_numbers.py --out out/quantization

Same checkpoint, engines and calibration data as scripts/quantization_numbers.py (reused
when --out already holds them), plus the TensorRT build's ONNX directory (standard
attention, fp32 UNet). Each UNet is quantized on a copy of that directory, in its own
process so its peak memory is its own: ONNX Runtime's quantizer (what the TensorRT build
used before), Model Optimizer INT8 and FP8. Then per-step UNet error and end-to-end PSNR
vs the float UNet of the same directory, file sizes and ONNX Runtime CPU timings.
Writes modelopt.json + modelopt.md under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from svd_trt.calibration import speed
from svd_trt.calibration.dataset import load_calibration
from svd_trt.calibration.report import quantized_report

log = logging.getLogger("modelopt_numbers")
VARIANTS = ("ort-int8", "modelopt-int8", "modelopt-fp8")


def quantize_one(variant: str, directory: Path, calib: Path) -> dict:
    """In this process: quantize `directory`'s UNet; seconds and peak RSS (this process or its child)."""
    start = time.perf_counter()
    if variant == "ort-int8":
        from svd_trt.calibration.quantize import quantize_unet

        quantize_unet(directory, calib, "int8", target="tensorrt")
    else:
        from svd_trt.calibration.modelopt_quantize import quantize_unet_modelopt

        quantize_unet_modelopt(directory, calib, variant.split("-")[1])
    peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"quantize_s": time.perf_counter() - start, "peak_rss_bytes": peak * 1024}


def trt_onnx_dir(root: Path) -> Path:
    from svd_trt.export.onnx_export import build_onnx_dir

    out = root / "onnx-tensorrt-fp32-unet"
    build_onnx_dir(root / "svd-small-random", out, "tensorrt", {"unet": "fp32"})
    return out


def run_variant(variant: str, src: Path, calib: Path, root: Path, threads, e2e_runs: int) -> dict:
    out = root / f"tensorrt-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    cmd = [sys.executable, __file__, "--one", variant, "--dir", str(out), "--calib", str(calib)]
    result = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    )
    report = quantized_report(out, calib, e2e_runs=e2e_runs, threads=threads)
    held = load_calibration(calib, "held_out")[0]
    timing = speed.time_unets(out, held, repeats=5, threads=threads)
    return {"engine_dir": str(out), **result, "report": report, "speed": timing}


def summary(results: dict) -> str:
    lines = [
        "| UNet (TensorRT ONNX, small model) | quantize s | peak RSS GB | size MiB | UNet rel RMS "
        "| UNet mean abs | e2e PSNR dB | ORT CPU s/step (fp32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rep, t = r["report"], r["speed"]
        o = rep["unet_steps"]["overall"]
        psnrs = ", ".join(f"{x['psnr_db']:.2f}" for x in rep["end_to_end"])
        lines.append(
            f"| {name} | {r['quantize_s']:.0f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
            f"{rep['sizes']['quantized_bytes'] / 2**20:.1f} ({rep['sizes']['float_bytes'] / 2**20:.1f}) | "
            f"{o['rel_rms']:.3f} | {o['mean_abs']:.4f} | {psnrs} | {t['quantized_s']:.3f} ({t['float_s']:.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/quantization"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--e2e-runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(quantize_one(args.one, args.dir, args.calib)))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.path.insert(0, str(Path(__file__).parent))
    from quantization_numbers import build

    defaults = argparse.Namespace(runs=8, steps=10, frames=8, size=128)
    _, calib = build(args.out, args.threads, defaults)
    src = trt_onnx_dir(args.out)
    results = {}
    for variant in args.variants.split(","):
        log.info("variant %s", variant)
        results[variant] = run_variant(variant, src, calib, args.out, args.threads, args.e2e_runs)
    (args.out / "modelopt.json").write_text(json.dumps(results, indent=2, default=_json) + "\n")
    (args.out / "modelopt.md").write_text(summary(results))
    print(summary(results))


def _json(x):
    return float(x) if isinstance(x, np.floating) else str(x)


if __name__ == "__main__":
    main()
