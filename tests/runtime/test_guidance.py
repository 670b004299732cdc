"""Per-frame CFG scale and combine against the code of diffusers' StableVideoDiffusionPipeline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _append_dims

from svd_trt.runtime import guidance

CASES = [(b, f) for b in (1, 2) for f in (1, 2, 14, 25)]


def _pipeline_scale(min_scale: float, max_scale: float, num_frames: int, batch: int) -> torch.Tensor:
    """Step 8 of StableVideoDiffusionPipeline.__call__, verbatim (latents are 5-D)."""
    scale = torch.linspace(min_scale, max_scale, num_frames).unsqueeze(0)
    scale = scale.to("cpu", torch.float32)
    scale = scale.repeat(batch, 1)
    return _append_dims(scale, 5)


def _pipeline_cfg(max_scale) -> bool:
    """The pipeline's do_classifier_free_guidance property, on a stand-in object."""
    return bool(
        StableVideoDiffusionPipeline.do_classifier_free_guidance.fget(
            SimpleNamespace(guidance_scale=max_scale)
        )
    )


@pytest.mark.parametrize("batch, frames", CASES)
@pytest.mark.parametrize("lo, hi", [(1.0, 3.0), (1.0, 2.5), (1.5, 3.0), (0.7, 7.3)])
def test_scale_matches_pipeline(batch, frames, lo, hi):
    ours = guidance.guidance_scale(lo, hi, frames, batch)
    ref = _pipeline_scale(lo, hi, frames, batch).numpy()
    assert ours.shape == ref.shape == (batch, frames, 1, 1, 1)
    assert ours.dtype == np.float32
    # bit-identical: we reproduce torch.linspace's float32 rounding (see euler.linspace_f32)
    np.testing.assert_array_equal(ours, ref)


def test_scale_dtype_follows_latents():
    """The pipeline casts the scale to latents.dtype (fp16 pipelines)."""
    ours = guidance.guidance_scale(1.0, 3.0, 25, 1, dtype=np.float16)
    ref = _pipeline_scale(1.0, 3.0, 25, 1).to(torch.float16).numpy()
    assert ours.dtype == np.float16
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("max_scale", [0.5, 1.0, 1.0 + 1e-6, 1.5, 3.0])
def test_do_cfg_matches_pipeline(max_scale):
    assert guidance.do_cfg(max_scale) == _pipeline_cfg(max_scale)
    # inside the loop the property sees the per-frame tensor; with min <= max it agrees
    assert guidance.do_cfg(max_scale) == _pipeline_cfg(_pipeline_scale(min(1.0, max_scale), max_scale, 14, 1))


@pytest.mark.parametrize("batch, frames", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_combine_matches_pipeline(batch, frames, dtype):
    gen = torch.Generator().manual_seed(batch * 100 + frames)
    noise_pred = torch.randn(2 * batch, frames, 4, 6, 8, generator=gen).to(dtype)
    scale = _pipeline_scale(1.0, 3.0, frames, batch).to(dtype)
    uncond, cond = noise_pred.chunk(2)  # the pipeline's order: unconditional first
    ref = uncond + scale * (cond - uncond)
    ours = guidance.combine(
        uncond.numpy(),
        cond.numpy(),
        guidance.guidance_scale(1.0, 3.0, frames, batch, dtype=scale.numpy().dtype),
    )
    assert ours.dtype == ref.numpy().dtype
    np.testing.assert_array_equal(ours, ref.numpy())
