"""The accuracy cost of the quantized UNet: per-step UNet error and end-to-end frame error.

Two measurements, both against the float UNet kept in the same engine directory:
- per step: both UNets on the held-out recorded inputs (trajectories of the float
  pipeline the calibration never saw), errors grouped by denoising step index;
- end to end: the pipeline with the quantized UNet vs with the float one, from the same
  image noise and initial latents, for the held-out runs' settings; frame PSNR and max
  abs error on frames in [0, 1].
`quantized_report` returns a JSON-able dict; `markdown` renders it for report.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from svd_trt.calibration import speed
from svd_trt.calibration.dataset import CalibrationDataError, load_index, load_sample, select
from svd_trt.families.svd.pipeline import GenerationOptions, SVDPipeline
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.runners import OrtRunner

log = logging.getLogger(__name__)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """10 log10(peak^2 / MSE) in dB; inf for identical inputs."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def _errors(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    d = np.abs(out.astype(np.float64) - ref)
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "rel": float(d.max() / max(np.abs(ref).max(), 1e-30)),
        "rel_rms": float(np.sqrt(np.mean(d**2) / max(np.mean(ref**2), 1e-30))),
    }


def step_errors(float_unet, quant_unet, calib_dir: str | Path, max_samples: int | None = None) -> dict:
    """Both UNets on the held-out samples: worst max/rel and average mean abs error per step index."""
    index = load_index(calib_dir)
    entries = select(index, "held_out") or select(index, "all")
    entries = entries[:max_samples] if max_samples else entries
    per_step: dict[int, list[dict]] = defaultdict(list)
    for entry in entries:
        inputs = load_sample(calib_dir, entry)
        (ref,) = float_unet.run(inputs).values()
        (out,) = quant_unet.run(inputs).values()
        per_step[entry["step"]].append(_errors(np.asarray(ref, np.float64), np.asarray(out)))
    steps = {step: _combine(errs) for step, errs in sorted(per_step.items())}
    return {
        "samples": len(entries),
        "overall": _combine([e for v in per_step.values() for e in v]),
        "per_step": steps,
    }


def _combine(errs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "max_abs": max(e["max_abs"] for e in errs),
        "mean_abs": float(np.mean([e["mean_abs"] for e in errs])),
        "rel": max(e["rel"] for e in errs),
        "rel_rms": max(e["rel_rms"] for e in errs),
        "n": len(errs),
    }


def end_to_end(pipe: SVDPipeline, float_unet, quant_unet, image, opts: GenerationOptions) -> dict:
    """One video with each UNet from the same noise: PSNR (dB) and max abs error of the frames."""
    opts = pipe.resolve(opts)
    image_noise, latents = pipe.draw_noise(opts, None, None)
    frames, original = {}, pipe.runners["unet"]
    try:
        for name, unet in (("float", float_unet), ("quantized", quant_unet)):
            pipe.runners["unet"] = unet
            frames[name] = pipe(image, opts, latents=latents, image_noise=image_noise).frames
    finally:
        pipe.runners["unet"] = original
    diff = np.abs(frames["quantized"].astype(np.float64) - frames["float"])
    return {
        "psnr_db": psnr(frames["quantized"], frames["float"]),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
    }


def _held_out_runs(index: dict, runs: int) -> list[dict]:
    held = [r for r in index["runs"] if r["split"] == "held_out"] or index["runs"]
    return held[:runs]


def quantized_report(
    engine_dir: str | Path,
    calib_dir: str | Path,
    e2e_runs: int = 1,
    max_samples: int | None = None,
    images_dir: str | Path | None = None,
    threads: int | None = None,
) -> dict:
    """The quantized-UNet section of the accuracy report (see the module docstring)."""
    engine_dir, calib_dir = Path(engine_dir), Path(calib_dir)
    float_entry, quant_entry = speed.unet_entries(engine_dir)
    float_unet = OrtRunner(engine_dir / float_entry.file, name="unet_float", threads=threads)
    pipe = SVDPipeline.from_engine_dir(engine_dir, backend="onnxruntime", threads=threads)
    quant_unet = pipe.runners["unet"]
    index = load_index(calib_dir)
    report = {
        "component": "unet",
        "precision": quant_entry.precision,
        "quantization": quant_entry.extra.get("quantization", {}),
        "sizes": speed.sizes(engine_dir),
        "unet_steps": step_errors(float_unet, quant_unet, calib_dir, max_samples),
        "end_to_end": [],
    }
    base = GenerationOptions(**index["options"])
    for run in _held_out_runs(index, e2e_runs):
        opts = dataclasses.replace(
            base,
            seed=run["seed"],
            motion_bucket_id=run["motion_bucket_id"],
            noise_aug_strength=run["noise_aug_strength"],
            fps=run["fps"],
        )
        image = load_image(_image_path(run, images_dir))
        result = end_to_end(pipe, float_unet, quant_unet, image, opts)
        report["end_to_end"].append({**run, **result})
    return report


def _image_path(run: dict, images_dir: str | Path | None) -> Path:
    """The run's image: as recorded, else by name in `images_dir` or the shipped assets."""
    from svd_trt.calibration.capture import ASSETS

    name = run["image"]
    if run.get("image_path") and Path(run["image_path"]).is_file():
        return Path(run["image_path"])
    for folder in (Path(images_dir) if images_dir else None, ASSETS):
        if folder is not None and (folder / name).exists():
            return folder / name
    raise CalibrationDataError(f"{name}: calibration image not found (moved since the capture?)")


def _step_row(step, e: dict) -> str:
    return f"| {step} | {e['n']} | {e['max_abs']:.4g} | {e['mean_abs']:.4g} | {e['rel']:.4g} | {e['rel_rms']:.4g} |"


def markdown(report: dict) -> str:
    """The report as a Markdown section."""
    s, q, steps = report["sizes"], report["quantization"], report["unet_steps"]
    lines = [
        f"## Quantized UNet ({report['precision']})",
        "",
        f"Calibration: {q.get('method', '?')}, excluded groups {', '.join(q.get('exclude', []))} "
        f"({q.get('excluded_nodes', '?')} nodes kept float). "
        f"Size {s['quantized_bytes'] / 2**20:.1f} MiB vs {s['float_bytes'] / 2**20:.1f} MiB float ({s['ratio']:.2f}x).",
        "",
        f"UNet output error on {steps['samples']} held-out recorded inputs:",
        "",
        "| step | n | max abs | mean abs | rel (max/max) | rel RMS |",
        "|---|---|---|---|---|---|",
    ]
    for step, e in steps["per_step"].items():
        lines.append(_step_row(step, e))
    lines.append(_step_row("all", steps["overall"]))
    lines += ["", "End to end (frames in [0, 1], same noise, quantized vs float UNet):", ""]
    lines += [
        "| image | seed | motion | aug | PSNR dB | max abs | mean abs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["end_to_end"]:
        lines.append(
            f"| {r['image']} | {r['seed']} | {r['motion_bucket_id']} | {r['noise_aug_strength']} | "
            f"{r['psnr_db']:.2f} | {r['max_abs']:.4g} | {r['mean_abs']:.4g} |"
        )
    return "\n".join(lines) + "\n"
