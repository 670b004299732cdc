"""Per-frame classifier-free guidance, as diffusers' StableVideoDiffusionPipeline does it.

The guidance weight ramps linearly from the first frame to the last; the batch given to the UNet
is [unconditional, conditional] (zero image embedding and zero image latent first). Whether CFG
runs at all is a rule of the request (svd_trt/options.do_cfg).
"""

from __future__ import annotations

import numpy as np

from svd_trt.runtime.torch_math import linspace_f32


def guidance_scale(
    min_scale: float, max_scale: float, num_frames: int, batch_size: int = 1, dtype: np.dtype = np.float32
) -> np.ndarray:
    """w_f = linspace(min, max, F) repeated over the batch, [B, F, 1, 1, 1] (diffusers' _append_dims to 5 dims).

    dtype: the latents' dtype, which the pipeline casts the scale to.
    """
    ramp = linspace_f32(min_scale, max_scale, num_frames)  # torch.linspace's float32 bits
    return np.tile(ramp.astype(dtype), (batch_size, 1))[:, :, None, None, None]


def combine(uncond: np.ndarray, cond: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """uncond + w * (cond - uncond), [B, F, C, h, w]; scale [B, F, 1, 1, 1] broadcasts per frame."""
    return uncond + scale * (cond - uncond)
