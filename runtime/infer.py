"""Engine directory + image file -> video file; the library function behind `svd-trt infer`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svd_trt.manifest import ManifestError
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.pipeline import GenerationOptions, PipelineError, SVDPipeline, Timings
from svd_trt.runtime.video import contact_sheet as write_contact_sheet
from svd_trt.runtime.video import save_frames

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif", ".npy", "")


class InferError(Exception):
    """Any expected failure of a run, as one line."""


@dataclass
class InferResult:
    path: Path
    contact_sheet: Path | None
    timings: Timings


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES and not out.is_dir():
        raise InferError(f"{out}: unknown output type {out.suffix!r}; use .mp4, .gif, .npy or a directory")


def infer_to_file(
    engine_dir: str | Path,
    image: str | Path,
    out: str | Path,
    latents: np.ndarray | None = None,
    image_noise: np.ndarray | None = None,
    output_fps: float | None = None,
    contact_sheet: str | Path | None = None,
    backend: str | None = None,
    progress: bool = False,
    **generation,
) -> InferResult:
    """Run one generation and write `out` (and the contact sheet); only complete files are left."""
    out = Path(out)
    _check_out(out)
    opts = GenerationOptions(**generation)
    try:
        pil = load_image(image)
        pipe = SVDPipeline.from_engine_dir(engine_dir, backend=backend)
        result = _run(pipe, pil, opts, latents, image_noise, progress)
    except (ManifestError, PipelineError, ValueError, FileNotFoundError) as e:
        raise InferError(str(e).splitlines()[0]) from None
    except RuntimeError as e:  # the backend refused the shapes (e.g. outside a TensorRT profile)
        raise InferError(f"the engines cannot run this request: {str(e).splitlines()[0]}") from None
    fps = output_fps if output_fps is not None else opts.fps
    path = save_frames(result.frames, out, fps=fps)
    sheet = write_contact_sheet(result.frames, Path(contact_sheet)) if contact_sheet else None
    return InferResult(path, sheet, result.timings)


def _run(pipe, pil, opts, latents, image_noise, progress):
    if not progress:
        return pipe(pil, opts, latents=latents, image_noise=image_noise)
    from tqdm import tqdm

    steps = pipe.resolve(opts).num_inference_steps
    with tqdm(total=steps, desc="denoising", unit="step") as bar:
        return pipe(pil, opts, latents=latents, image_noise=image_noise, on_step=lambda i, n: bar.update(1))
