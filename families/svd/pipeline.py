"""Image to video with the exported components: diffusers' StableVideoDiffusionPipeline in numpy.

Same steps, order of random draws and dtypes as diffusers (pipeline_stable_video_diffusion.py):
CLIP on the original image, VAE on the H x W image plus noise augmentation, Euler
with Karras sigmas and v-prediction, per-frame CFG with the UNet called once per step
at batch 2, chunked decode. Only `runners` differ between backends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from svd_trt.families.svd import euler, guidance
from svd_trt.families.svd.clip_preprocess import clip_pixel_values
from svd_trt.families.svd.options import GenerationOptions, do_cfg
from svd_trt.family import VideoOutput
from svd_trt.options import PipelineError
from svd_trt.runtime.engine_pipeline import EnginePipeline, check_draws, check_finite
from svd_trt.runtime.image_preprocess import postprocess, vae_pixel_values
from svd_trt.runtime.timings import Timings

log = logging.getLogger(__name__)

__all__ = ["GenerationOptions", "PipelineError", "SVDPipeline", "Timings", "VideoOutput"]


class SVDPipeline(EnginePipeline):
    """Built once from an engine directory; each call renders one video."""

    @classmethod
    def check_model(cls, cfg) -> None:
        euler.check_scheduler(cfg.scheduler)

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
        timings = Timings("UNet", placement=self.placement)
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

    def generate(self, inputs, opts, draws=None, on_step=None) -> VideoOutput:
        """The family interface (svd_trt/family.py): inputs {"image": PIL image}; draws by name."""
        draws = draws or {}
        return self(inputs["image"], opts, draws.get("latents"), draws.get("image_noise"), on_step)

    def draw(self, opts: GenerationOptions, inputs=None, given=None) -> dict[str, np.ndarray]:
        """Every draw of one run by name, in diffusers' order; a given array replaces its draw."""
        given = given or {}
        image_noise, latents = self.draw_noise(opts, given.get("image_noise"), given.get("latents"))
        return {"image_noise": image_noise, "latents": latents}

    def latent_shape(self, opts: GenerationOptions) -> tuple[int, ...]:
        s = self.cfg.vae.scale_factor
        return (1, opts.num_frames, self.cfg.vae.latent_channels, opts.height // s, opts.width // s)

    def draw_noise(self, opts, image_noise, latents) -> tuple[np.ndarray, np.ndarray]:
        """diffusers' order: the image noise is drawn first, the initial latents second."""
        rng = np.random.default_rng(opts.seed)
        shapes = {"image_noise": (1, 3, opts.height, opts.width), "latents": self.latent_shape(opts)}
        arrays = []
        for (what, shape), given in zip(shapes.items(), (image_noise, latents)):
            if given is None:
                given = rng.standard_normal(shape, dtype=np.float32)
            else:
                check_draws({what: given}, {what: shape})
            arrays.append(np.asarray(given, dtype=np.float32))
        return arrays[0], arrays[1]

    def encode_image(self, image: Image.Image, cfg_on: bool, timings: Timings) -> np.ndarray:
        """CLIP embedding of the original image, [B, 1, D]; the unconditional one is zeros."""
        pixels = clip_pixel_values(image, self.cfg.feature_extractor, self.cfg.clip.image_size)
        embeds = self.timed("image_encoder", timings, "CLIP")(pixels)[:, None]
        return np.concatenate([np.zeros_like(embeds), embeds]) if cfg_on else embeds

    def encode_vae(self, image, noise, opts, cfg_on, timings) -> np.ndarray:
        """Mode of the noise-augmented image's latent, unscaled, repeated over frames: [B, F, C, h, w]."""
        pixels = (
            vae_pixel_values(image, opts.height, opts.width, self.cfg.vae.scale_factor)
            + np.float32(opts.noise_aug_strength) * noise
        )
        latent = self.timed("vae_encoder", timings, "VAE encode")(pixels)
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
        unet = self.timed("unet", timings, "UNet")

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
        decoder = self.timed("vae_decoder", timings, "decode")
        chunks = [
            decoder(z[i : i + opts.decode_chunk_size])
            for i in range(0, len(z), opts.decode_chunk_size)
        ]
        decoded = np.concatenate(chunks)
        check_finite(decoded, "vae_decoder", "the decoded frames")  # before postprocess clips an inf away
        return postprocess(decoded)


def added_time_ids(
    fps: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch: int = 1,
    dtype: np.dtype = np.float32,
) -> np.ndarray:
    """[fps - 1, motion_bucket_id, noise_aug_strength] per row, [B, 3]; SVD was conditioned on fps - 1.

    For CFG pass batch = 2 * B: diffusers concatenates two identical copies.
    """
    row = np.array([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=dtype)
    return np.repeat(row, batch, axis=0)


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PipelineError(f"image array must be [H, W, 3], got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)
