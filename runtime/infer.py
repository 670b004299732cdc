"""Engine directory + image file -> video file; the library function behind `svd-trt infer`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svd_trt.errors import UserError
from svd_trt.manifest import load_manifest
from svd_trt.options import GenerationOptions, resolve
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.pipeline import SVDPipeline, Timings
from svd_trt.runtime.video import contact_sheet as write_contact_sheet
from svd_trt.runtime.video import save_frames

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif", ".npy", "")


class InferError(UserError):
    """Any expected failure of a run, as one line."""


@dataclass
class InferResult:
    path: Path
    contact_sheet: Path | None
    timings: Timings


def engine_error(error: RuntimeError) -> InferError:
    """A backend's run-time failure (ONNX Runtime / TensorRT) as the one line users see."""
    return InferError(f"the engines cannot run this request: {str(error).splitlines()[0]}")


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES and not out.is_dir():
        raise InferError(f"{out}: unknown output type {out.suffix!r}; use .mp4, .gif, .npy or a directory")


def infer_to_file(
    engine_dir: str | Path,
    image: str | Path,
    out: str | Path,
    options: GenerationOptions | None = None,
    latents: np.ndarray | None = None,
    image_noise: np.ndarray | None = None,
    output_fps: float | None = None,
    contact_sheet: str | Path | None = None,
    backend: str | None = None,
    progress: bool = False,
) -> InferResult:
    """Run one generation and write `out` (and the contact sheet); only complete files are left.

    Everything that can be checked is checked before any component runs: the output path, the
    options against the model and the sizes the engines serve, the image.
    """
    out = Path(out)
    _check_out(out)
    manifest = load_manifest(engine_dir)
    opts = resolve(options or GenerationOptions(), manifest.model, manifest.limits)
    try:
        pil = load_image(image)
    except ValueError as e:
        raise InferError(str(e)) from None
    try:
        with SVDPipeline.from_engine_dir(engine_dir, backend=backend) as pipe:
            result = _run(pipe, pil, opts, latents, image_noise, progress)
    except RuntimeError as e:  # a backend failed at run time (ONNX Runtime / TensorRT)
        raise engine_error(e) from None
    fps = output_fps if output_fps is not None else opts.fps
    path = save_frames(result.frames, out, fps=fps)
    sheet = write_contact_sheet(result.frames, Path(contact_sheet)) if contact_sheet else None
    return InferResult(path, sheet, result.timings)


def _run(pipe, pil, opts, latents, image_noise, progress):
    if not progress:
        return pipe(pil, opts, latents=latents, image_noise=image_noise)
    from tqdm import tqdm

    def advance(i: int, n: int) -> None:
        bar.total = n  # the schedule's count (diffusers' log_linear sigmas take one step more)
        bar.update(1)

    with tqdm(total=opts.num_inference_steps, desc="denoising", unit="step") as bar:
        return pipe(pil, opts, latents=latents, image_noise=image_noise, on_step=advance)
