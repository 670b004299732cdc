"""Record the UNet's inputs during real pipeline runs: the INT8 calibration data.

The pipeline is not changed: its `runners["unet"]` is wrapped in a `RecordingRunner`
that hands every call's inputs to a callback before running the float UNet. Each run
varies the image, seed, motion bucket and noise-augmentation strength, so the
calibration ranges cover the conditioning a user will pass. The on-disk format is
described in calibration/README.md and `svd_trt.calibration.dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from svd_trt.calibration.dataset import FORMAT_VERSION, INDEX_NAME
from svd_trt.errors import UserError
from svd_trt.families.svd import euler
from svd_trt.families.svd.pipeline import GenerationOptions, SVDPipeline
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.runners import Runner

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "runtime" / "assets"
# Per-file overhead of np.savez beyond the raw array bytes (zip + .npy headers), with margin.
NPZ_OVERHEAD = 2048


class CalibrationError(UserError):
    """Bad calibration input or data; the message is one line."""


def default_images() -> list[Path]:
    """The shipped, redistributable photographs (runtime/assets/*.jpg)."""
    return sorted(ASSETS.glob("*.jpg"))


def expand_images(items: Sequence[str | Path]) -> list[Path]:
    """Files as given; directories expand to their .jpg/.jpeg/.png files, sorted."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        else:
            out.append(item)
    if not out:
        raise CalibrationError("no calibration images given")
    return out


@dataclass(frozen=True)
class RunPlan:
    """One pipeline run of the capture."""

    run: int
    image: str
    seed: int
    motion_bucket_id: int
    noise_aug_strength: float
    fps: int
    split: str  # "calibration" or "held_out"


def plan_runs(images: Sequence[Path], runs: int, seed: int = 0, held_out: float = 0.25) -> list[RunPlan]:
    """Images in turn; seed, motion bucket (1..255) and noise aug (0..0.1, SVD's useful range) drawn.

    The last round(runs * held_out) runs (at least one when runs > 1) are held out, so the
    accuracy report scores the quantized UNet on trajectories it was not calibrated on.
    """
    rng = np.random.default_rng(seed)
    n_held = min(runs - 1, max(1, round(runs * held_out))) if runs > 1 else 0
    plans = []
    for r in range(runs):
        plans.append(
            RunPlan(
                run=r,
                image=str(images[r % len(images)]),
                seed=seed + r,
                motion_bucket_id=int(rng.integers(1, 256)),
                noise_aug_strength=round(float(rng.uniform(0.0, 0.1)), 4),
                fps=int(rng.choice([6, 7, 8, 10, 12])),
                split="held_out" if r >= runs - n_held else "calibration",
            )
        )
    return plans


def sample_bytes(pipe: SVDPipeline, opts: GenerationOptions, batch: int = 2) -> int:
    """Bytes of one recorded UNet call (float32 inputs at batch 2 = CFG), npz overhead included."""
    specs = pipe.manifest.specs()["unet"]
    s = pipe.cfg.vae.scale_factor
    sizes = {"B": batch, "F": opts.num_frames, "h": opts.height // s, "w": opts.width // s}
    n = sum(int(np.prod(t.shape(sizes))) for t in specs.inputs)
    return 4 * n + NPZ_OVERHEAD


def choose_calls(total: int, capacity: int) -> set[int]:
    """Evenly spaced call numbers (over runs x steps) when the cap holds fewer than all calls."""
    if capacity >= total:
        return set(range(total))
    return {int(i) for i in np.linspace(0, total - 1, max(capacity, 0)).round()}


class RecordingRunner:
    """A Runner that passes each call's inputs to `record` and then runs `inner`."""

    def __init__(self, inner: Runner, record: Callable[[dict[str, np.ndarray]], None]) -> None:
        self.inner, self.record = inner, record
        self.name = inner.name

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.record(inputs)
        return self.inner.run(inputs)


class _Writer:
    """Writes the selected calls as step files and keeps the index entries and byte count."""

    def __init__(self, out: Path, keep: set[int], max_bytes: int) -> None:
        self.out, self.keep, self.max_bytes = out, keep, max_bytes
        self.entries: list[dict] = []
        self.calls = 0
        self.bytes = 0
        self.refused = 0

    def write(self, inputs: dict[str, np.ndarray], meta: dict) -> None:
        call = self.calls
        self.calls += 1
        if call not in self.keep:
            return
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        size = sum(a.nbytes for a in arrays.values()) + NPZ_OVERHEAD
        if self.bytes + size > self.max_bytes:  # guard: the plan's estimate should already fit
            self.refused += 1
            return
        name = f"step-{len(self.entries):05d}.npz"
        np.savez(self.out / name, **arrays)
        self.bytes += (self.out / name).stat().st_size
        self.entries.append({"file": name, **meta})


def capture_calibration(
    engine_dir: str | Path,
    images: Sequence[str | Path] | None,
    out_dir: str | Path,
    options: GenerationOptions | None = None,
    runs: int = 8,
    max_bytes: int = 2**30,
    held_out: float = 0.25,
    threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Run the float pipeline `runs` times and record the UNet inputs of every step; returns the index.

    `options` sets the size, steps and base seed (run r uses seed + r); the per-run conditioning
    is drawn by `plan_runs`. Writes `out_dir/step-NNNNN.npz` ({sample [B, F, C, h, w], timestep [B],
    encoder_hidden_states [B, 1, D], added_time_ids [B, 3]}, float32) and `out_dir/index.json`.
    When runs x steps calls exceed `max_bytes`, an evenly spaced subset is kept and the
    index says so (`subsampled`, `calls_total`, `calls_kept`).
    """
    paths = expand_images(images) if images else default_images()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("step-*.npz"):  # a re-capture replaces the data, never mixes with it
        old.unlink()
    pipe = _float_pipeline(engine_dir, threads, device)
    base = pipe.resolve(options or GenerationOptions(seed=0))
    seed = base.seed or 0
    # UNet calls per run: the schedule's, which can differ from the step count (diffusers' log_linear)
    calls = len(euler.make_schedule(pipe.cfg.scheduler, base.num_inference_steps).timesteps)
    total, one = runs * calls, sample_bytes(pipe, base)
    if max_bytes < one:
        raise CalibrationError(f"the size cap ({max_bytes} bytes) holds no UNet call ({one} bytes each)")
    keep = choose_calls(total, max_bytes // one)
    writer = _Writer(out, keep, max_bytes)
    plans = plan_runs(paths, runs, seed, held_out)
    for plan in plans:
        _run_one(pipe, plan, base, writer)
        log.info(
            "run %d/%d (%s): %d samples so far",
            plan.run + 1,
            runs,
            Path(plan.image).name,
            len(writer.entries),
        )
    inputs = pipe.manifest.specs()["unet"].input_names
    index = _index(engine_dir, inputs, base, plans, writer, total, max_bytes)
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _float_pipeline(engine_dir: str | Path, threads: int | None, device: str) -> SVDPipeline:
    pipe = SVDPipeline.from_engine_dir(engine_dir, backend="onnxruntime", threads=threads, device=device)
    precision = pipe.manifest.components["unet"].precision
    if precision != "fp32":
        raise CalibrationError(f"{engine_dir}: calibration needs the fp32 UNet, this one is {precision}")
    return pipe


def _run_one(pipe: SVDPipeline, plan: RunPlan, base: GenerationOptions, writer: _Writer) -> None:
    sigmas = euler.make_schedule(pipe.cfg.scheduler, base.num_inference_steps).sigmas
    step = iter(range(len(sigmas) - 1))

    def record(inputs: dict[str, np.ndarray]) -> None:
        i = next(step)
        meta = {**asdict(plan), "image": Path(plan.image).name, "step": i, "sigma": float(sigmas[i])}
        writer.write(inputs, meta)

    float_unet = pipe.runners["unet"]
    pipe.runners["unet"] = RecordingRunner(float_unet, record)
    try:
        opts = dataclasses.replace(
            base,
            seed=plan.seed,
            motion_bucket_id=plan.motion_bucket_id,
            noise_aug_strength=plan.noise_aug_strength,
            fps=plan.fps,
        )
        pipe(load_image(plan.image), opts)
    finally:
        pipe.runners["unet"] = float_unet


def _index(engine_dir, inputs, opts: GenerationOptions, plans: list[RunPlan], writer: _Writer, total, max_bytes):
    kept = len(writer.entries)
    return {
        "format_version": FORMAT_VERSION,
        "engine_dir": str(Path(engine_dir).resolve()),
        "inputs": list(inputs),
        "options": asdict(opts),
        # The path too: the accuracy report re-runs held-out runs from the same image.
        "runs": [
            {**asdict(p), "image": Path(p.image).name, "image_path": str(Path(p.image).resolve())}
            for p in plans
        ],
        "max_bytes": max_bytes,
        "bytes": writer.bytes,
        "calls_total": total,
        "calls_kept": kept,
        "subsampled": kept < total,
        "skipped_over_cap": writer.refused,
        "note": (
            f"size cap {max_bytes} bytes: kept {kept} of {total} UNet calls, evenly spaced over runs x steps"
            if kept < total
            else "every UNet call recorded"
        ),
        "samples": writer.entries,
    }
