"""Engine directory + inputs (an image, a prompt) -> video file; the library function behind `svd-trt infer`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svd_trt.errors import UserError
from svd_trt.family import VideoOutput, family_named
from svd_trt.manifest import load_manifest
from svd_trt.memory import plan_for
from svd_trt.options import flag
from svd_trt.runtime.devices import check_device
from svd_trt.runtime.engine_pipeline import check_finite_input, open_pipeline
from svd_trt.runtime.inputs import input_paths, load_inputs
from svd_trt.runtime.outputs import Outputs, check_outputs, describe, write_failure
from svd_trt.runtime.timings import Timings
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
    out: str | Path,
    inputs: Mapping[str, Any],
    options: Any = None,
    draws: Mapping[str, ArrayInput] | None = None,
    output_fps: float | None = None,
    contact_sheet: str | Path | None = None,
    backend: str | None = None,
    progress: bool = False,
    device: str | None = None,
) -> InferResult:
    """Run one generation and write `out` (and the contact sheet); only complete files are left.

    `inputs`: the family's conditioning inputs by name (an image's path, a prompt); `options`: the
    family's generation options (None: its defaults); `draws`: random draws given as arrays or .npy
    files, by name (svd_trt/family.py DrawSpec). Everything that can be checked is checked before
    any component runs: the output paths (form, no input overwritten, writable, encodable:
    runtime/outputs.py), the options against the model, the sizes the engines serve and the
    memory available, the arrays and the image. What can only fail while writing (a full disk) is
    one line too. `device`: cpu, cuda or cuda:N (default: the backend's own); refused before
    anything else where the backend cannot run there (onnxruntime without its CUDA provider).
    """
    outputs = Outputs.of(out, contact_sheet)
    manifest = load_manifest(engine_dir)
    family = family_named(manifest.family)
    backend = backend or manifest.backend
    if backend != "torch":  # the torch backend picks and checks its own device
        device = str(check_device(backend, device))
    memory = plan_for(engine_dir, manifest, backend, device or "cpu")
    opts = family.resolve(options or family.options(), manifest.model, manifest.limits)
    memory.check(manifest.model, opts)
    fps = output_fps if output_fps is not None else family.output_fps(opts)
    files = {"--engines": Path(engine_dir), **input_paths(family, inputs)}
    arrays = {}
    for name, given in (draws or {}).items():
        if isinstance(given, (str, os.PathLike)):
            files[flag(name)] = Path(given)
        arrays[name] = _load_array(given, flag(name))
    check_outputs(outputs, files, opts.num_frames, fps, opts.height, opts.width)
    loaded = load_inputs(family, inputs)
    result = _render(engine_dir, backend, device, loaded, opts, arrays, progress)
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


def _render(engine_dir, backend, device, inputs, opts, draws, progress) -> VideoOutput:
    """Open the engines, run, and close them: their memory is freed before the frames are written.

    A backend failing at run time is an EngineError naming the component (the pipeline's runner
    calls, svd_trt.errors.engine_failure): one line, exit 2, nothing written.
    """
    where = {"device": device} if device else {}
    with open_pipeline(engine_dir, backend=backend, **where) as pipe:
        drawn = pipe.draw(opts, inputs, draws)  # a given array of the wrong shape: one line
        return _run(pipe, inputs, opts, drawn, progress)


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


def _run(pipe, inputs, opts, draws, progress):
    if not progress:
        return pipe.generate(inputs, opts, draws)
    from tqdm import tqdm

    def advance(i: int, n: int) -> None:
        bar.total = n  # the schedule's count (diffusers' log_linear sigmas take one step more)
        bar.update(1)

    with tqdm(total=opts.num_inference_steps, desc="denoising", unit="step") as bar:
        return pipe.generate(inputs, opts, draws, on_step=advance)
