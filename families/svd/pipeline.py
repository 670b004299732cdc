"""Image to video with the exported components: diffusers' StableVideoDiffusionPipeline in numpy.

Same steps, order of random draws and dtypes as diffusers (pipeline_stable_video_diffusion.py):
CLIP on the original image, VAE on the H x W image plus noise augmentation, Euler
with Karras sigmas and v-prediction, per-frame CFG with the UNet called once per step
at batch 2, chunked decode. Only `runners` differ between backends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from svd_trt.errors import EngineError, engine_failure
from svd_trt.families.svd import euler, guidance
from svd_trt.families.svd.clip_preprocess import clip_pixel_values
from svd_trt.manifest import Manifest, load_manifest
from svd_trt.memory import MemoryPlan, plan_for
from svd_trt.options import GenerationOptions, PipelineError, do_cfg, request_shape, resolve
from svd_trt.runtime.devices import check_device
from svd_trt.runtime.image_preprocess import added_time_ids, postprocess, vae_pixel_values
from svd_trt.runtime.runners import Runner, open_runner
from svd_trt.spec import ComponentSpec

log = logging.getLogger(__name__)

__all__ = ["GenerationOptions", "PipelineError", "SVDPipeline", "Timings", "VideoOutput"]


@dataclass
class Timings:
    """Seconds per stage; `overhead` is wall time spent outside component calls; `placement`: where the
    components ran, as their backends report it (ONNX Runtime: the providers its sessions use)."""

    clip: float = 0.0
    vae_encode: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    decode: float = 0.0
    total: float = 0.0
    placement: str = ""

    @property
    def unet(self) -> float:
        return float(sum(self.unet_steps))

    @property
    def overhead(self) -> float:
        return self.total - self.clip - self.vae_encode - self.unet - self.decode

    def summary(self) -> str:
        steps = len(self.unet_steps) or 1
        return (
            f"CLIP {self.clip:.3f} s | VAE encode {self.vae_encode:.3f} s | "
            f"UNet {self.unet:.3f} s ({self.unet / steps:.3f} s/step x {len(self.unet_steps)}) | "
            f"decode {self.decode:.3f} s | overhead {self.overhead:.3f} s "
            f"({100 * self.overhead / max(self.total, 1e-9):.2f}%) | total {self.total:.3f} s"
            + (f" | {self.placement}" if self.placement else "")
        )


@dataclass
class VideoOutput:
    frames: np.ndarray  # [F, H, W, 3] float32 in [0, 1]
    timings: Timings


class _Timed:
    """Calls a runner with its inputs in the spec's order (svd_trt/spec.py names them) and adds the
    wall time to one Timings field; a backend's failure becomes an EngineError naming the component
    (svd_trt/errors.py)."""

    def __init__(self, runner: Runner, spec: ComponentSpec, timings: Timings, stage: str) -> None:
        self.runner, self.spec, self.timings, self.stage = runner, spec, timings, stage

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        inputs = dict(zip(self.spec.input_names, arrays, strict=True))
        start = time.perf_counter()
        try:
            out = self.runner.run(inputs)[self.spec.output_names[0]]
        except Exception as e:
            failure = engine_failure(e, component=self.runner.name)
            if failure is None or failure is e:
                raise
            raise failure from e
        elapsed = time.perf_counter() - start
        if self.stage == "unet_steps":
            self.timings.unet_steps.append(elapsed)
        else:
            setattr(self.timings, self.stage, getattr(self.timings, self.stage) + elapsed)
        return np.asarray(out, dtype=np.float32)


class SVDPipeline:
    """Built once from an engine directory; each call renders one video."""

    def __init__(
        self, manifest: Manifest, runners: dict[str, Runner], memory: MemoryPlan | None = None
    ) -> None:
        euler.check_scheduler(manifest.model.scheduler)
        self.manifest = manifest
        self.cfg = manifest.model
        self.specs = manifest.specs()
        self.runners = runners
        self.memory = memory  # checked before every call; None: unchecked

    @property
    def placement(self) -> str:
        """Where the components run, as their runners report it (one entry per distinct place)."""
        places = [getattr(r, "placement", type(r).__name__) for r in self.runners.values()]
        return "; ".join(dict.fromkeys(places))

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, backend: str | None = None, **options) -> SVDPipeline:
        """Open every component of `engine_dir` with `backend` (default: the one it was built for).

        options: `device` (cpu, cuda, cuda:N; default the backend's own), and the backend's own
        (ONNX Runtime `threads`; torch: see export/torch_backend.py)."""
        manifest = load_manifest(engine_dir)
        euler.check_scheduler(manifest.model.scheduler)  # before any session is opened
        backend = backend or manifest.backend
        if backend != "torch":  # the torch backend picks and checks its own device
            options["device"] = str(check_device(backend, options.get("device")))
        runners = {
            name: open_runner(engine_dir, name, manifest.components[name], backend, **options)
            for name in manifest.specs()
        }
        memory = plan_for(engine_dir, manifest, backend, options.get("device") or "cpu", loaded=True)
        return cls(manifest, runners, memory)

    def close(self) -> None:
        """Free what the runners hold (TensorRT device buffers); closing twice is harmless."""
        # ExitStack calls every close even when one raises, and then re-raises.
        with contextlib.ExitStack() as stack:
            for runner in self.runners.values():
                if callable(getattr(runner, "close", None)):
                    stack.callback(runner.close)

    def __enter__(self) -> SVDPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resolve(self, opts: GenerationOptions) -> GenerationOptions:
        """Fill model defaults and reject what the engines cannot run (or memory cannot hold), each with one line."""
        opts = resolve(opts, self.cfg, self.manifest.limits)
        if self.memory is not None:
            self.memory.check(self.cfg, request_shape(opts))
        return opts

    def __call__(
        self,
        image: Image.Image | np.ndarray,
        options: GenerationOptions | None = None,
        latents: np.ndarray | None = None,
        image_noise: np.ndarray | None = None,
        on_step: Callable[[int, int], None] | None = None,
        **kwargs,
    ) -> VideoOutput:
        """Frames [F, H, W, 3] in [0, 1], as diffusers returns with output_type='np'."""
        opts = self.resolve(dataclasses.replace(options or GenerationOptions(), **kwargs))
        image = _as_pil(image)
        timings = Timings(placement=self.placement)
        start = time.perf_counter()
        image_noise, latents = self.draw_noise(opts, image_noise, latents)
        cfg_on = do_cfg(opts.max_guidance_scale)
        embeds = self.encode_image(image, cfg_on, timings)
        image_latents = self.encode_vae(image, image_noise, opts, cfg_on, timings)
        latents = self.denoise(latents, embeds, image_latents, opts, cfg_on, timings, on_step)
        check_finite(latents, "unet", "the denoised latents")
        frames = self.decode(latents, opts, timings)
        timings.total = time.perf_counter() - start
        return VideoOutput(frames, timings)

    def _timed(self, name: str, timings: Timings, stage: str) -> _Timed:
        return _Timed(self.runners[name], self.specs[name], timings, stage)

    def latent_shape(self, opts: GenerationOptions) -> tuple[int, ...]:
        s = self.cfg.vae.scale_factor
        return (1, opts.num_frames, self.cfg.vae.latent_channels, opts.height // s, opts.width // s)

    def draw_noise(self, opts, image_noise, latents) -> tuple[np.ndarray, np.ndarray]:
        """diffusers' order: the image noise is drawn first, the initial latents second."""
        rng = np.random.default_rng(opts.seed)
        shapes = {"image noise": (1, 3, opts.height, opts.width), "latents": self.latent_shape(opts)}
        arrays = []
        for (what, shape), given in zip(shapes.items(), (image_noise, latents)):
            if given is None:
                given = rng.standard_normal(shape, dtype=np.float32)
            elif tuple(given.shape) != shape:
                raise PipelineError(f"{what} must have shape {list(shape)}, got {list(given.shape)}")
            else:
                check_finite_input(given, what)
            arrays.append(np.asarray(given, dtype=np.float32))
        return arrays[0], arrays[1]

    def encode_image(self, image: Image.Image, cfg_on: bool, timings: Timings) -> np.ndarray:
        """CLIP embedding of the original image, [B, 1, D]; the unconditional one is zeros."""
        pixels = clip_pixel_values(image, self.cfg.feature_extractor, self.cfg.clip.image_size)
        embeds = self._timed("image_encoder", timings, "clip")(pixels)[:, None]
        return np.concatenate([np.zeros_like(embeds), embeds]) if cfg_on else embeds

    def encode_vae(self, image, noise, opts, cfg_on, timings) -> np.ndarray:
        """Mode of the noise-augmented image's latent, unscaled, repeated over frames: [B, F, C, h, w]."""
        pixels = (
            vae_pixel_values(image, opts.height, opts.width, self.cfg.vae.scale_factor)
            + np.float32(opts.noise_aug_strength) * noise
        )
        latent = self._timed("vae_encoder", timings, "vae_encode")(pixels)
        if cfg_on:
            latent = np.concatenate([np.zeros_like(latent), latent])
        return np.repeat(latent[:, None], opts.num_frames, axis=1)

    def denoise(self, noise, embeds, image_latents, opts, cfg_on, timings, on_step=None) -> np.ndarray:
        """euler.sample_euler with the UNet as its model: image latents appended, CFG per frame."""
        sched = self.cfg.scheduler
        schedule = euler.make_schedule(sched, opts.num_inference_steps)
        batch = image_latents.shape[0]
        time_ids = added_time_ids(opts.fps, opts.motion_bucket_id, opts.noise_aug_strength, batch)
        scale = guidance.guidance_scale(opts.min_guidance_scale, opts.max_guidance_scale, opts.num_frames, 1)
        unet = self._timed("unet", timings, "unet_steps")

        def model(x_in: np.ndarray, t: np.float32) -> np.ndarray:
            """One UNet call for [B, F, C, h, w]: at batch 2B (uncond first) when CFG is on."""
            model_in = np.concatenate([x_in] * 2) if cfg_on else x_in
            pred = unet(
                np.concatenate([model_in, image_latents], axis=2),  # [B, F, 2C, h, w]
                np.full((batch,), t, dtype=np.float32),
                embeds,
                time_ids,
            )
            half = len(x_in)
            return guidance.combine(pred[:half], pred[half:], scale) if cfg_on else pred

        return euler.sample_euler(model, noise, schedule, sched.prediction_type, on_step)

    def decode(self, latents: np.ndarray, opts: GenerationOptions, timings: Timings) -> np.ndarray:
        """Chunks of decode_chunk_size frames, each decoded on its own (as diffusers): [F, H, W, 3]."""
        z = latents[0] / np.float32(self.cfg.vae.scaling_factor)
        decoder = self._timed("vae_decoder", timings, "decode")
        chunks = [
            decoder(z[i : i + opts.decode_chunk_size])
            for i in range(0, len(z), opts.decode_chunk_size)
        ]
        decoded = np.concatenate(chunks)
        check_finite(decoded, "vae_decoder", "the decoded frames")  # before postprocess clips an inf away
        return postprocess(decoded)


def check_finite(array: np.ndarray, component: str, what: str) -> None:
    """EngineError naming the component when `array` holds NaN or inf: a broken engine (an fp16
    overflow, the classic GPU failure) must not be written as a black video."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise EngineError(
            f"{component}: {what} are not finite ({bad} of {array.size} values NaN or inf); "
            "nothing was written. An fp16 overflow is the usual cause: check the engines with svd-export check"
        )


def check_finite_input(array: np.ndarray, what: str) -> None:
    """PipelineError (the request's fault) when a given noise array holds NaN or inf."""
    if np.issubdtype(np.asarray(array).dtype, np.number) and not np.isfinite(array).all():
        raise PipelineError(f"{what}: holds NaN or inf values; pass finite noise")


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PipelineError(f"image array must be [H, W, 3], got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)
