"""Engine directory + image file -> video file; the library function behind `svd-trt infer`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svd_trt.errors import UserError
from svd_trt.families.svd.pipeline import SVDPipeline, Timings, VideoOutput, check_finite_input
from svd_trt.manifest import load_manifest
from svd_trt.memory import plan_for
from svd_trt.options import GenerationOptions, request_shape, resolve
from svd_trt.runtime.devices import check_device
from svd_trt.runtime.image_preprocess import load_image
from svd_trt.runtime.outputs import Outputs, check_outputs, describe, write_failure
from svd_trt.runtime.video import contact_sheet as write_contact_sheet
from svd_trt.runtime.video import save_frames

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
ArrayInput = np.ndarray | str | os.PathLike | None  # an array, or a .npy file holding it


class InferError(UserError):
    """Any expected failure of a run, as one line."""


@dataclass
class InferResult:
    path: Path
    contact_sheet: Path | None
    timings: Timings


def infer_to_file(
    engine_dir: str | Path,
    image: str | Path,
    out: str | Path,
    options: GenerationOptions | None = None,
    latents: ArrayInput = None,
    image_noise: ArrayInput = None,
    output_fps: float | None = None,
    contact_sheet: str | Path | None = None,
    backend: str | None = None,
    progress: bool = False,
    device: str | None = None,
) -> InferResult:
    """Run one generation and write `out` (and the contact sheet); only complete files are left.

    Everything that can be checked is checked before any component runs: the output paths
    (form, no input overwritten, writable, encodable: runtime/outputs.py), the options against
    the model, the sizes the engines serve and the memory available (svd_trt/options.py), the
    arrays and the image. What can only fail while writing (a full disk) is one line too.
    `device`: cpu, cuda or cuda:N (default: the backend's own); refused before anything else
    where the backend cannot run there (onnxruntime without its CUDA provider).
    """
    outputs = Outputs.of(out, contact_sheet)
    manifest = load_manifest(engine_dir)
    backend = backend or manifest.backend
    if backend != "torch":  # the torch backend picks and checks its own device
        device = str(check_device(backend, device))
    memory = plan_for(engine_dir, manifest, backend, device or "cpu")
    opts = resolve(options or GenerationOptions(), manifest.model, manifest.limits)
    memory.check(manifest.model, request_shape(opts))
    fps = output_fps if output_fps is not None else opts.fps
    inputs = {"--image": Path(image), "--engines": Path(engine_dir)}
    arrays = {}
    for flag, given in (("--latents", latents), ("--image-noise", image_noise)):
        if isinstance(given, (str, os.PathLike)):
            inputs[flag] = Path(given)
        arrays[flag] = _load_array(given, flag)
    check_outputs(outputs, inputs, opts.num_frames, fps, opts.height, opts.width)
    pil = load_image(image)
    result = _render(
        engine_dir, backend, device, pil, opts, arrays["--latents"], arrays["--image-noise"], progress
    )
    return _write(result, outputs, fps)


def _load_array(given: ArrayInput, flag: str) -> np.ndarray | None:
    if given is None or isinstance(given, np.ndarray):
        return given
    try:
        with open(given, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:  # np.load would try it as a pickle and say so
                raise InferError(f"{flag} {given}: not a .npy file")
        array = np.load(given, allow_pickle=False)
    except FileNotFoundError:
        raise InferError(f"{flag} {given}: no such file") from None
    except (OSError, ValueError) as e:
        raise InferError(f"{flag} {given}: cannot read it as .npy ({describe(e)})") from None
    check_finite_input(array, f"{flag} {given}")
    return array


def _render(engine_dir, backend, device, pil, opts, latents, image_noise, progress) -> VideoOutput:
    """Open the engines, run, and close them: their memory is freed before the frames are written.

    A backend failing at run time is an EngineError naming the component (the pipeline's runner
    calls, svd_trt.errors.engine_failure): one line, exit 2, nothing written.
    """
    where = {"device": device} if device else {}
    with SVDPipeline.from_engine_dir(engine_dir, backend=backend, **where) as pipe:
        return _run(pipe, pil, opts, latents, image_noise, progress)


def _write(result: VideoOutput, outputs: Outputs, fps: float) -> InferResult:
    """Write the video, then the sheet; a failure (a full disk) is one line and leaves no partial file."""
    written = None
    try:
        written = save_frames(result.frames, outputs.video, fps=fps)
        sheet = write_contact_sheet(result.frames, outputs.contact_sheet) if outputs.contact_sheet else None
    except OSError as e:
        where = outputs.contact_sheet if written else outputs.video
        kept = f"; {written} was written" if written else ""
        raise InferError(f"cannot write {where}: {write_failure(e, where)}{kept}") from None
    return InferResult(written, sheet, result.timings)


def _run(pipe, pil, opts, latents, image_noise, progress):
    if not progress:
        return pipe(pil, opts, latents=latents, image_noise=image_noise)
    from tqdm import tqdm

    def advance(i: int, n: int) -> None:
        bar.total = n  # the schedule's count (diffusers' log_linear sigmas take one step more)
        bar.update(1)

    with tqdm(total=opts.num_inference_steps, desc="denoising", unit="step") as bar:
        return pipe(pil, opts, latents=latents, image_noise=image_noise, on_step=advance)
