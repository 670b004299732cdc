"""Text / image to video with the exported components: diffusers' LTXPipeline and
LTXImageToVideoPipeline in numpy.

Same steps, order of random draws and dtypes as diffusers (pipeline_ltx.py, pipeline_ltx_image2video.py):
T5 called without its mask (the mask reaches the transformer as a cross-attention bias, over the
positions some prompt of the batch uses: see trim_text_padding), CFG batch
[negative, positive], RoPE cos/sin computed here in float32, per-token timesteps (image to video:
frame 0's tokens get t * (1 - mask) = 0 and are never stepped), the flow-match Euler schedule of the
snapshot's scheduler config, then decode (whole, or in tiles as vae.enable_tiling()) with decode
noise where the decoder is timestep-conditioned. Only `runners` differ between backends.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from svd_trt.families.ltx import flow_match
from svd_trt.families.ltx import latents as lat
from svd_trt.families.ltx.config import LTXConfig
from svd_trt.families.ltx.image_preprocess import video_pixel_values
from svd_trt.families.ltx.options import cfg_on
from svd_trt.families.ltx.rope import rope_cos_sin
from svd_trt.families.ltx.tiled_decode import tiled_decode
from svd_trt.families.ltx.tokenizer import TOKENIZER_FILE, encode, load_tokenizer
from svd_trt.family import VideoOutput
from svd_trt.options import PipelineError
from svd_trt.runtime.engine_pipeline import EnginePipeline, check_draws, check_finite
from svd_trt.runtime.timings import Timings

log = logging.getLogger(__name__)

F32 = np.float32
DENOISER = "transformer"


def trim_text_padding(embeds: np.ndarray, mask: np.ndarray, floor: int) -> tuple[np.ndarray, np.ndarray]:
    """embeds [B, L, D], mask [B, L] -> the first L' positions, L' = the last one any prompt of the
    batch uses (at least `floor`, the shortest text the engines serve).

    What is dropped is padding in every row: its cross-attention bias is -10000, so its softmax weight
    is exp(-10000 + ...) = 0 in float32 and the transformer's output is unchanged up to summation
    order (T5 has seen every position: it runs without the mask). A row with no token at all attends
    to every position evenly, so then nothing is dropped.
    """
    used = mask.any(axis=0)
    if not mask.any(axis=1).all():
        return embeds, mask
    n = max(int(np.flatnonzero(used)[-1]) + 1, floor)
    return embeds[:, :n], mask[:, :n]


class LTXVideoPipeline(EnginePipeline):
    """Built once from an engine directory (its runners and tokenizer.json); each `generate` renders
    one video. The config carries the VAE's latents mean and std (the build reads them from the
    snapshot's VAE weights)."""

    @classmethod
    def check_model(cls, cfg: LTXConfig) -> None:
        flow_match.check_config(cfg.scheduler)

    @functools.cached_property
    def tokenizer(self) -> Any:
        if TOKENIZER_FILE not in self.assets:
            raise PipelineError(f"this pipeline was given no {TOKENIZER_FILE} (an LTX engine directory holds one)")
        return load_tokenizer(self.assets[TOKENIZER_FILE])

    # ------------------------------------------------------------------ geometry and draws

    def grid(self, opts) -> tuple[int, int, int]:
        """The latent (F', H', W') of a request."""
        _, _, f, h, w = self.latent_shape(opts)
        return f, h, w

    def latent_shape(self, opts) -> tuple[int, int, int, int, int]:
        c = self.cfg
        return lat.latent_shape(
            1, c.latent_channels, opts.num_frames, opts.height, opts.width, c.temporal_ratio, c.spatial_ratio
        )

    def draw_shapes(self, opts, with_image: bool) -> dict[str, tuple[int, ...]]:
        """The random draws of one run and their shapes, in diffusers' order (families/ltx/latents.py)."""
        return lat.draw_shapes(self.latent_shape(opts), int(with_image), self.cfg.vae.timestep_conditioning)

    def draw(self, opts, inputs: Mapping[str, Any] | None = None, given=None) -> dict[str, np.ndarray]:
        """Every draw from one generator seeded with opts.seed; a given array replaces its draw."""
        shapes = self.draw_shapes(opts, (inputs or {}).get("image") is not None)
        given = {k: v for k, v in (given or {}).items() if v is not None}
        check_draws(given, shapes)
        return lat.draw(np.random.default_rng(opts.seed), shapes, given)

    # ------------------------------------------------------------------ the stages, in order

    def encode_prompts(self, prompt: str, negative: str, opts, timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """T5 embeddings [B, L, D] and masks [B, L] float32: [negative, positive] when CFG is on."""
        texts = [negative, prompt] if cfg_on(opts.guidance_scale) else [prompt]
        ids, mask = encode(self.tokenizer, texts, opts.max_sequence_length)
        out = self.timed("text_encoder", timings, "T5").run(input_ids=ids)
        return out["text_embeds"], mask.astype(F32)

    def image_latents(self, image: Image.Image, noise: np.ndarray, opts, timings: Timings) -> np.ndarray:
        """The normalized posterior sample of the image, [1, C, 1, H', W'] (prepare_latents)."""
        pixels = video_pixel_values(image, opts.height, opts.width, self.cfg.spatial_ratio)
        out = self.timed("vae_encoder", timings, "VAE encode").run(image=pixels)
        sample = lat.posterior_sample(out["latent_mean"], out["latent_std"], noise)
        return lat.normalize(sample, self.cfg.latents_mean, self.cfg.latents_std)

    def denoise(
        self,
        x: np.ndarray,
        embeds: np.ndarray,
        text_mask: np.ndarray,
        image_mask: np.ndarray | None,
        opts,
        timings: Timings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """The flow-match Euler loop on packed latents [1, S, C]; image_mask [1, S] for image to video."""
        tc, grid = self.cfg.transformer, self.grid(opts)
        schedule = flow_match.make_schedule(
            self.cfg.scheduler, opts.num_inference_steps, flow_match.video_sequence_length(*grid)
        )
        batch = len(embeds)
        cos, sin = rope_cos_sin(
            *grid,
            tc.inner_dim,
            opts.frame_rate,
            self.cfg.temporal_ratio,
            self.cfg.spatial_ratio,
            batch_size=batch,
            patch_size=tc.patch_size,
            patch_size_t=tc.patch_size_t,
        )
        span = self.manifest.limits.get("max_sequence_length")
        embeds, text_mask = trim_text_padding(embeds, text_mask, span.min if span else embeds.shape[1])
        masks = None if image_mask is None else np.concatenate([image_mask] * batch)
        transformer = self.timed("transformer", timings, DENOISER).run
        n = len(schedule.timesteps)
        for i, t in enumerate(schedule.timesteps):
            pred = transformer(
                hidden_states=np.concatenate([x] * batch) if batch > 1 else x,
                encoder_hidden_states=embeds,
                timestep=lat.token_timesteps(t, batch, x.shape[1], masks),
                encoder_attention_mask=text_mask,
                rope_cos=cos,
                rope_sin=sin,
            )["noise_pred"]
            if batch > 1:
                pred = lat.guide(pred, opts.guidance_scale, opts.guidance_rescale)
            s, s_next = schedule.sigmas[i], schedule.sigmas[i + 1]
            if image_mask is None:
                x = flow_match.step(pred, x, s, s_next)
            else:
                x = lat.step_after_first_frame(pred, x, s, s_next, grid, tc.patch_size, tc.patch_size_t)
            if on_step:
                on_step(i + 1, n)
        return x

    def decode(self, x: np.ndarray, noise: np.ndarray | None, opts, timings: Timings) -> np.ndarray:
        """Packed latents -> frames [F, H, W, 3] in [0, 1]: denormalize, decode noise, the decoder."""
        tc, c = self.cfg.transformer, self.cfg
        z = lat.unpack(x, *self.grid(opts), tc.patch_size, tc.patch_size_t)
        z = lat.denormalize(z, c.latents_mean, c.latents_std, c.vae.scaling_factor)
        z, timestep = lat.decode_inputs(z, noise, opts.decode_timestep, opts.decode_noise_scale)
        decoder = self.timed("vae_decoder", timings, "decode").run

        def run(latents: np.ndarray, t: np.ndarray | None) -> np.ndarray:
            feed = {"latents": latents} if t is None else {"latents": latents, "timestep": t}
            return decoder(**feed)["frames"]

        if opts.decode_tiling:
            video = tiled_decode(run, z, timestep, c.spatial_ratio, c.temporal_ratio)
        else:
            video = run(z, timestep)
        check_finite(video, "vae_decoder", "the decoded frames")  # before the clip turns an inf into 1
        return lat.frames(video)[0]

    # ------------------------------------------------------------------ one generation

    def generate(
        self,
        inputs: Mapping[str, Any],
        opts,
        draws: Mapping[str, np.ndarray | None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> VideoOutput:
        """Frames [F, H, W, 3] in [0, 1] (diffusers' output_type='np', first video) and their timings.

        inputs: "prompt", optional "negative_prompt" and "image" (a PIL image: image to video);
        draws: given arrays by name (the rest drawn from opts.seed). `opts` is resolved here."""
        opts = self.resolve(opts)
        timings = Timings(DENOISER, placement=self.placement)
        start = time.perf_counter()
        image = inputs.get("image")
        drawn = self.draw(opts, inputs, draws)
        embeds, text_mask = self.encode_prompts(inputs["prompt"], inputs.get("negative_prompt") or "", opts, timings)
        tc = self.cfg.transformer
        image_mask = None
        if image is None:
            x = lat.pack(drawn["latents"], tc.patch_size, tc.patch_size_t)
        else:
            init = self.image_latents(image, drawn["encoder_noise"], opts, timings)
            x, image_mask = lat.image_to_video_latents(init, drawn["latents"], tc.patch_size, tc.patch_size_t)
        x = self.denoise(x, embeds, text_mask, image_mask, opts, timings, on_step)
        check_finite(x, "transformer", "the denoised latents")
        frames = self.decode(x, drawn.get("decode_noise"), opts, timings)
        timings.total = time.perf_counter() - start
        return VideoOutput(frames, timings)
