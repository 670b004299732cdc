"""Text / image to video with the exported components: diffusers' LTXPipeline and
LTXImageToVideoPipeline in numpy.

Same steps, order of random draws and dtypes as diffusers (pipeline_ltx.py, pipeline_ltx_image2video.py):
T5 called without its mask (the mask reaches the transformer as a cross-attention bias), CFG batch
[negative, positive], RoPE cos/sin computed here in float32, per-token timesteps (image to video:
frame 0's tokens get t * (1 - mask) = 0 and are never stepped), the flow-match Euler schedule of the
snapshot's scheduler config, then decode (whole, or in tiles as vae.enable_tiling()) with decode
noise where the decoder is timestep-conditioned. Only `runners` differ between backends.
"""

from __future__ import annotations

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
from svd_trt.families.ltx.rope import rope_cos_sin
from svd_trt.families.ltx.tiled_decode import tiled_decode
from svd_trt.families.ltx.tokenizer import encode
from svd_trt.options import PipelineError
from svd_trt.runtime.runners import Runner
from svd_trt.runtime.timings import Timed, Timings

log = logging.getLogger(__name__)

F32 = np.float32
DENOISER = "transformer"


def cfg_on(guidance_scale: float) -> bool:
    """diffusers' do_classifier_free_guidance: guidance_scale > 1."""
    return guidance_scale > 1.0


class LTXVideo:
    """The pipeline over one set of runners (one engine directory); each `generate` renders one video.

    `tokenizer`: a `tokenizers.Tokenizer` (the engine directory's tokenizer.json). `cfg` must carry
    the VAE's latents mean and std (recorded by the build from the snapshot's VAE weights).
    """

    def __init__(self, cfg: LTXConfig, runners: Mapping[str, Runner], tokenizer: Any) -> None:
        self.cfg = cfg
        self.runners = dict(runners)
        self.tokenizer = tokenizer
        self.schedule_cfg = flow_match.FlowMatchConfig.from_mapping(cfg.scheduler.to_dict())
        flow_match.check_config(self.schedule_cfg)  # refused before any component runs

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

    def draw(self, opts, with_image: bool, given: Mapping[str, np.ndarray | None] | None = None) -> dict:
        """Every draw from one generator seeded with opts.seed; a given array replaces its draw."""
        shapes = self.draw_shapes(opts, with_image)
        given = {k: v for k, v in (given or {}).items() if v is not None}
        for name, array in given.items():
            flag = "--" + name.replace("_", "-")
            if name not in shapes:
                raise PipelineError(f"{flag} does not apply to this request (it draws {', '.join(shapes)})")
            if tuple(array.shape) != shapes[name]:
                raise PipelineError(f"{flag} must have shape {list(shapes[name])}, got {list(array.shape)}")
        return lat.draw(np.random.default_rng(opts.seed), shapes, given)

    # ------------------------------------------------------------------ the stages, in order

    def encode_prompts(self, prompt: str, negative: str, opts, timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """T5 embeddings [B, L, D] and masks [B, L] float32: [negative, positive] when CFG is on."""
        texts = [negative, prompt] if cfg_on(opts.guidance_scale) else [prompt]
        ids, mask = encode(self.tokenizer, texts, opts.max_sequence_length)
        out = Timed(self.runners["text_encoder"], timings, "T5")(input_ids=ids)
        return out["text_embeds"], mask.astype(F32)

    def image_latents(self, image: Image.Image, noise: np.ndarray, opts, timings: Timings) -> np.ndarray:
        """The normalized posterior sample of the image, [1, C, 1, H', W'] (prepare_latents)."""
        pixels = video_pixel_values(image, opts.height, opts.width, self.cfg.spatial_ratio)
        out = Timed(self.runners["vae_encoder"], timings, "VAE encode")(image=pixels)
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
            self.schedule_cfg, opts.num_inference_steps, flow_match.video_sequence_length(*grid)
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
        masks = None if image_mask is None else np.concatenate([image_mask] * batch)
        transformer = Timed(self.runners["transformer"], timings, DENOISER)
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
        decoder = Timed(self.runners["vae_decoder"], timings, "decode")

        def run(latents: np.ndarray, t: np.ndarray | None) -> np.ndarray:
            feed = {"latents": latents} if t is None else {"latents": latents, "timestep": t}
            return decoder(**feed)["frames"]

        if opts.decode_tiling:
            video = tiled_decode(run, z, timestep, c.spatial_ratio, c.temporal_ratio)
        else:
            video = run(z, timestep)
        return lat.frames(video)[0]

    # ------------------------------------------------------------------ one generation

    def generate(
        self,
        prompt: str,
        opts,
        negative_prompt: str = "",
        image: Image.Image | None = None,
        draws: Mapping[str, np.ndarray | None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, Timings]:
        """Frames [F, H, W, 3] in [0, 1] (diffusers' output_type='np', first video) and their timings.

        `opts` must be resolved (svd_trt.families.ltx.options.resolve).
        """
        timings = Timings(DENOISER)
        start = time.perf_counter()
        drawn = self.draw(opts, image is not None, draws)
        embeds, text_mask = self.encode_prompts(prompt, negative_prompt, opts, timings)
        tc = self.cfg.transformer
        image_mask = None
        if image is None:
            x = lat.pack(drawn["latents"], tc.patch_size, tc.patch_size_t)
        else:
            init = self.image_latents(image, drawn["encoder_noise"], opts, timings)
            x, image_mask = lat.image_to_video_latents(init, drawn["latents"], tc.patch_size, tc.patch_size_t)
        x = self.denoise(x, embeds, text_mask, image_mask, opts, timings, on_step)
        frames = self.decode(x, drawn.get("decode_noise"), opts, timings)
        timings.total = time.perf_counter() - start
        return frames, timings
