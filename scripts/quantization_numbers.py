"""The numbers in docs/quantization.md: size, CPU speed and accuracy of the INT8 UNet vs float.

    .venv/bin/python scripts/quantization_numbers.py --out out/quantization

Makes the `small` random checkpoint (as `svd-export make-checkpoint --size small`), builds
fp32 ONNX Runtime engines, records calibration data from the shipped photos, quantizes the
UNet once per calibration method (and once with no layers kept float), and writes
numbers.json + numbers.md under --out. Random weights: see the caveats in the doc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime

from svd_trt.calibration import speed
from svd_trt.calibration.capture import ASSETS, capture_calibration
from svd_trt.calibration.dataset import load_calibration, load_index
from svd_trt.calibration.quantize import DEFAULT_EXCLUDE, quantize_unet
from svd_trt.calibration.report import markdown, psnr, quantized_report
from svd_trt.export.onnx_export import build_onnx_dir
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.pipeline import GenerationOptions, SVDPipeline
from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint
from svd_trt.families.svd.spec import sizes_for
from svd_trt.manifest import load_manifest
from svd_trt.runtime.image_preprocess import load_image

log = logging.getLogger("quantization_numbers")


def variants(methods: list[str], ablate: bool) -> dict[str, dict]:
    out = {m: {"method": m, "exclude": DEFAULT_EXCLUDE} for m in methods}
    if ablate:
        out["minmax-no-exclusions"] = {"method": "minmax", "exclude": ()}
    return out


def build(root: Path, threads: int | None, args) -> tuple[Path, Path]:
    """Checkpoint, fp32 engines and calibration data (each reused when present)."""
    snapshot, engines, calib = root / "svd-small-random", root / "engines-fp32", root / "calibration"
    if not (snapshot / "model_index.json").exists():
        write_random_checkpoint(snapshot, preset("small"), None, 0)
    build_onnx_dir(snapshot, engines)
    if not (calib / "index.json").exists():
        start = time.perf_counter()
        capture_calibration(
            engines, None, calib, GenerationOptions(
                num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps, seed=0
            ), runs=args.runs, threads=threads,
        )  # fmt: skip
        log.info("captured in %.0f s", time.perf_counter() - start)
    return engines, calib


def measure(name: str, v: dict, engines: Path, calib: Path, root: Path, threads, e2e_runs: int) -> dict:
    out = root / f"engines-int8-{name}"
    start = time.perf_counter()
    quantize_unet(engines, calib, out=out, method=v["method"], exclude=v["exclude"])
    seconds = time.perf_counter() - start
    report = quantized_report(out, calib, e2e_runs=e2e_runs, threads=threads)
    return {"engine_dir": str(out), "quantize_s": seconds, "report": report}


def seed_baseline(engine_dir: Path, calib: Path, threads: int | None, runs: int) -> list[float]:
    """PSNR of the float pipeline vs itself with the next seed: two unrelated videos, for scale."""
    index = load_index(calib)
    pipe = SVDPipeline.from_engine_dir(engine_dir, threads=threads)
    out = []
    for run in [r for r in index["runs"] if r["split"] == "held_out"][:runs]:
        opts = GenerationOptions(**index["options"])
        opts = dataclasses.replace(
            opts, motion_bucket_id=run["motion_bucket_id"], noise_aug_strength=run["noise_aug_strength"],
            fps=run["fps"],
        )  # fmt: skip
        image = load_image(ASSETS / run["image"])
        a, b = (pipe(image, dataclasses.replace(opts, seed=run["seed"] + k)).frames for k in (0, 1))
        out.append(psnr(a, b))
    return out


def timings(engine_dir: Path, calib: Path, threads: int | None, repeats: int) -> list[dict]:
    """Interleaved medians at the calibration shape and at a 512x512 latent-heavy shape."""
    manifest = load_manifest(engine_dir)
    held = load_calibration(calib, "held_out")[0]
    frames = held["sample"].shape[1]
    big = manifest.specs()["unet"].sample_inputs(
        sizes_for(manifest.model, 2, frames, 512, 512), np.random.default_rng(0)
    )
    return [speed.time_unets(engine_dir, x, repeats, threads) for x in (held, big)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/quantization"))
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="Calibration height = width in pixels.")
    p.add_argument("--methods", default="minmax,percentile,entropy")
    p.add_argument("--no-ablation", action="store_true", help="Skip the no-exclusions variant.")
    p.add_argument("--e2e-runs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger().handlers[0].addFilter(lambda r: r.name != "root")  # ORT's per-tensor chatter
    args.out.mkdir(parents=True, exist_ok=True)
    engines, calib = build(args.out, args.threads, args)
    results = {}
    for name, v in variants(args.methods.split(","), not args.no_ablation).items():
        log.info("variant %s", name)
        results[name] = measure(name, v, engines, calib, args.out, args.threads, args.e2e_runs)
    first = results[args.methods.split(",")[0]]
    numbers = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "onnxruntime": onnxruntime.__version__,
        },
        "capture": {k: v for k, v in vars(args).items() if k in ("runs", "steps", "frames", "size")},
        "variants": results,
        "speed": timings(Path(first["engine_dir"]), calib, args.threads, args.repeats),
        "float_next_seed_psnr_db": seed_baseline(engines, calib, args.threads, args.e2e_runs),
    }
    (args.out / "numbers.json").write_text(json.dumps(numbers, indent=2, default=_json) + "\n")
    (args.out / "numbers.md").write_text(summary(numbers, first["report"]))
    print(summary(numbers, first["report"]))


def _json(x):
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return float(x) if isinstance(x, np.floating) else str(x)


def summary(numbers: dict, report: dict) -> str:
    lines = [
        "| variant | quantize s | UNet mean abs | UNet rel (max/max) | UNet rel RMS "
        "| e2e PSNR dB (held-out runs) | e2e max abs |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, r in numbers["variants"].items():
        o, e2e = r["report"]["unet_steps"]["overall"], r["report"]["end_to_end"]
        psnrs = ", ".join(f"{x['psnr_db']:.2f}" for x in e2e)
        lines.append(
            f"| {name} | {r['quantize_s']:.0f} | {o['mean_abs']:.4f} | {o['rel']:.3f} | {o['rel_rms']:.3f} | {psnrs} | "
            f"{max(x['max_abs'] for x in e2e):.3f} |"
        )
    base = ", ".join(f"{x:.2f}" for x in numbers["float_next_seed_psnr_db"])
    lines += ["", f"For scale: the float pipeline vs itself with the next seed: {base} dB."]
    lines += ["", "| UNet input | threads | fp32 s | int8 s | speedup |", "|---|---|---|---|---|"]
    for t in numbers["speed"]:
        lines.append(
            f"| {t['input_shape']} | {t['threads']} | {t['float_s']:.3f} | {t['quantized_s']:.3f} | "
            f"{t['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n\n" + markdown(report)


if __name__ == "__main__":
    main()
