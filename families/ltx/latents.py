"""Latent-side host math of LTXPipeline / LTXImageToVideoPipeline, numpy float32, in diffusers' operation order.

Shapes: video latents [B, C, F', H', W'] (F' = (F - 1) // temporal_ratio + 1, H' = H // spatial_ratio);
packed latents [B, S, C * pt * p * p] with S = (F' / pt) (H' / p) (W' / p), tokens row-major over
(f, h, w) as the transformer reads them. Random draws (one generator in diffusers, in this order):
  1. encoder_noise [num_images, C, 1, H', W']  image to video: the image posterior's standard normal
  2. latents       [B, C, F', H', W']          the initial noise (drawn unpacked, then packed)
  3. decode_noise  [B, C, F', H', W']          timestep-conditioned decoders only
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from svd_trt.families.ltx.flow_match import step
from svd_trt.runtime.image_preprocess import postprocess

F32 = np.float32
DRAWS = ("encoder_noise", "latents", "decode_noise")  # diffusers' order


# ---------------------------------------------------------------- shapes and random draws


def latent_shape(
    batch: int,
    channels: int,
    num_frames: int,
    height: int,
    width: int,
    temporal_ratio: int,
    spatial_ratio: int,
) -> tuple[int, int, int, int, int]:
    """prepare_latents' [B, C, F', H', W']: F' = (F - 1) // temporal_ratio + 1, H' = H // spatial_ratio."""
    frames = (num_frames - 1) // temporal_ratio + 1
    return batch, channels, frames, height // spatial_ratio, width // spatial_ratio


def draw_shapes(
    latents: tuple[int, ...], num_images: int = 0, timestep_conditioning: bool = False
) -> dict[str, tuple[int, ...]]:
    """The random draws of one run, in diffusers' order: {name: shape} (see the module docstring).

    num_images: 0 for text to video; timestep_conditioning: the VAE config's (decode noise).
    """
    b, c, f, h, w = latents
    shapes = {}
    if num_images:
        shapes["encoder_noise"] = (num_images, c, 1, h, w)
    shapes["latents"] = (b, c, f, h, w)
    if timestep_conditioning:
        shapes["decode_noise"] = (b, c, f, h, w)
    return shapes


def draw(
    rng: np.random.Generator,
    shapes: Mapping[str, tuple[int, ...]],
    given: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Standard normals float32 for each draw in order; a `given` array replaces its draw.

    Every draw is taken from rng even when given, so the others do not depend on which were given:
    a run replayed with one of its draws from a file gives the same video.
    """
    given = given or {}
    out = {}
    for name, shape in shapes.items():
        sample = rng.standard_normal(shape, dtype=F32)
        if name in given:
            if tuple(given[name].shape) != tuple(shape):
                raise ValueError(f"{name} has shape {tuple(given[name].shape)}, expected {tuple(shape)}")
            sample = np.asarray(given[name], dtype=F32)
        out[name] = sample
    return out


# ---------------------------------------------------------------- packing


def pack(latents: np.ndarray, patch_size: int = 1, patch_size_t: int = 1) -> np.ndarray:
    """[B, C, F, H, W] -> [B, S, C * pt * p * p]: diffusers' _pack_latents (channels, then the patch, per token)."""
    b, c, f, h, w = latents.shape
    x = latents.reshape(
        b, c, f // patch_size_t, patch_size_t, h // patch_size, patch_size, w // patch_size, patch_size
    )
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return np.ascontiguousarray(x).reshape(b, x.shape[1] * x.shape[2] * x.shape[3], -1)


def unpack(
    latents: np.ndarray, num_frames: int, height: int, width: int, patch_size: int = 1, patch_size_t: int = 1
) -> np.ndarray:
    """[B, S, D] -> [B, C, F, H, W]: diffusers' _unpack_latents; (F, H, W) is the token grid (the latent grid for patch 1)."""
    b = latents.shape[0]
    x = latents.reshape(b, num_frames, height, width, -1, patch_size_t, patch_size, patch_size)
    x = x.transpose(0, 4, 1, 5, 2, 6, 3, 7)
    c = x.shape[1]
    return np.ascontiguousarray(x).reshape(
        b, c, num_frames * patch_size_t, height * patch_size, width * patch_size
    )


# ---------------------------------------------------------------- normalization


def _per_channel(v: np.ndarray | list, dtype: np.dtype) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).astype(dtype).reshape(1, -1, 1, 1, 1)


def normalize(
    latents: np.ndarray, mean: np.ndarray, std: np.ndarray, scaling_factor: float = 1.0
) -> np.ndarray:
    """(z - mean) * scaling_factor / std per channel, [B, C, F, H, W], in z's dtype (diffusers' _normalize_latents).

    LTXImageToVideoPipeline calls it without the VAE's scaling_factor (1.0); LTX's configs have 1.0.
    """
    sf = np.asarray(scaling_factor, dtype=latents.dtype)
    return (latents - _per_channel(mean, latents.dtype)) * sf / _per_channel(std, latents.dtype)


def denormalize(
    latents: np.ndarray, mean: np.ndarray, std: np.ndarray, scaling_factor: float = 1.0
) -> np.ndarray:
    """z * std / scaling_factor + mean per channel, [B, C, F, H, W] (diffusers' _denormalize_latents)."""
    sf = np.asarray(scaling_factor, dtype=latents.dtype)
    return latents * _per_channel(std, latents.dtype) / sf + _per_channel(mean, latents.dtype)


def posterior_sample(mean: np.ndarray, std: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """mean + std * noise: DiagonalGaussianDistribution.sample with the vae_encoder's outputs, float32."""
    return mean.astype(F32, copy=False) + std.astype(F32, copy=False) * noise.astype(F32, copy=False)


# ---------------------------------------------------------------- image to video


def conditioning_mask(batch: int, latent_frames: int, latent_height: int, latent_width: int) -> np.ndarray:
    """[B, 1, F', H', W'] float32: 1 on latent frame 0 (the image), 0 elsewhere."""
    mask = np.zeros((batch, 1, latent_frames, latent_height, latent_width), F32)
    mask[:, :, 0] = 1
    return mask


def image_to_video_latents(
    image_latents: np.ndarray, noise: np.ndarray, patch_size: int = 1, patch_size_t: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Initial packed latents and packed mask [B, S] of image to video (LTXImageToVideoPipeline.prepare_latents).

    image_latents: the normalized posterior sample [num_images, C, 1, H', W'] (num_images 1 or B);
    noise: the initial noise [B, C, F', H', W']. Returns pack(init * mask + noise * (1 - mask)), pack(mask).
    """
    b, _, f, h, w = noise.shape
    init = np.repeat(image_latents.astype(F32, copy=False), f, axis=2)
    mask = conditioning_mask(b, f, h, w)
    latents = init * mask + noise.astype(F32, copy=False) * (F32(1) - mask)
    return pack(latents, patch_size, patch_size_t), pack(mask, patch_size, patch_size_t)[..., 0]


def token_timesteps(t: float, batch: int, tokens: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The transformer's `timestep` [B, S] float32: t everywhere (text to video) or t * (1 - mask) (image to video).

    mask: the packed conditioning mask [B, S], repeated for the CFG batch as the pipeline does.
    """
    t = F32(t)
    if mask is None:
        return np.full((batch, tokens), t, F32)
    return t * (F32(1) - mask)


def step_after_first_frame(
    velocity: np.ndarray,
    latents: np.ndarray,
    sigma: float,
    sigma_next: float,
    grid: tuple[int, int, int],
    patch_size: int = 1,
    patch_size_t: int = 1,
) -> np.ndarray:
    """Image to video's Euler step on packed [B, S, D]: latent frames 1: move, frame 0 (the image) stays.

    grid: the latent (F', H', W'). As the pipeline: unpack, step frames 1:, concatenate, pack.
    """
    v = unpack(velocity, *grid, patch_size, patch_size_t)
    x = unpack(latents, *grid, patch_size, patch_size_t)
    moved = step(v[:, :, 1:], x[:, :, 1:], sigma, sigma_next)
    return pack(
        np.concatenate([x[:, :, :1].astype(F32, copy=False), moved], axis=2), patch_size, patch_size_t
    )


# ---------------------------------------------------------------- guidance


def cfg_combine(noise_pred: np.ndarray, guidance_scale: float) -> np.ndarray:
    """[negative, positive] batch [2B, ...] -> uncond + w * (cond - uncond) [B, ...], float32."""
    uncond, cond = np.split(noise_pred.astype(F32, copy=False), 2)
    return uncond + F32(guidance_scale) * (cond - uncond)


def guide(noise_pred: np.ndarray, guidance_scale: float, guidance_rescale: float = 0.0) -> np.ndarray:
    """The pipelines' guidance of a [negative, positive] prediction [2B, ...] -> [B, ...], float32.

    CFG, then (guidance_rescale > 0) rescaled to the positive half's standard deviation.
    """
    guided = cfg_combine(noise_pred, guidance_scale)
    if guidance_rescale > 0:
        positive = np.split(noise_pred.astype(F32, copy=False), 2)[1]
        guided = rescale_noise_cfg(guided, positive, guidance_rescale)
    return guided


def rescale_noise_cfg(
    noise_cfg: np.ndarray, noise_pred_text: np.ndarray, guidance_rescale: float
) -> np.ndarray:
    """Lin et al. (2023) sec. 3.4: phi * cfg * std(text) / std(cfg) + (1 - phi) * cfg, std per sample (unbiased).

    The standard deviations are accumulated in float64 (torch's CPU std accumulates in double) then
    rounded to float32; the rest is float32 in diffusers' order.
    """
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = noise_pred_text.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(F32)
    std_cfg = noise_cfg.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(F32)
    rescaled = noise_cfg * (std_text / std_cfg)
    phi = F32(guidance_rescale)
    return phi * rescaled + F32(1 - guidance_rescale) * noise_cfg


# ---------------------------------------------------------------- decode


def decode_inputs(
    latents: np.ndarray, noise: np.ndarray | None, decode_timestep: float, decode_noise_scale: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The vae_decoder's (latents, timestep) from denormalized latents [B, C, F', H', W'].

    With a timestep-conditioned decoder (noise given): z = (1 - s) z + s * noise, timestep [B] =
    decode_timestep; s = decode_noise_scale, or decode_timestep when None (the pipeline's default).
    Without one (noise None): latents unchanged, no timestep.
    """
    if noise is None:
        return latents, None
    b = latents.shape[0]
    scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
    s = np.full((b, 1, 1, 1, 1), scale, dtype=latents.dtype)
    mixed = (1 - s) * latents + s * noise.astype(latents.dtype, copy=False)
    return mixed, np.full((b,), decode_timestep, dtype=latents.dtype)


def frames(video: np.ndarray) -> np.ndarray:
    """Decoder output [B, 3, F, H, W] -> frames [B, F, H, W, 3] in [0, 1]: clip(x / 2 + 0.5, 0, 1), float32."""
    return postprocess(video.transpose(0, 2, 1, 3, 4))  # one copy: the frames are a run's largest array
