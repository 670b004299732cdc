"""Per-frame CFG against what diffusers' StableVideoDiffusionPipeline actually computes in its loop:
the UNet's raw batch and the guided output its scheduler.step receives, recorded on a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from euler_bounds import linspace_bound, unfused_linspace
from PIL import Image

from svd_trt.families.svd import guidance
from svd_trt.families.svd.options import do_cfg

SIZE = 32  # pixels: tiny VAE's latents are 16 x 16


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


def _record(pipe, lo: float, hi: float, frames: int, batch: int, steps: int) -> dict:
    """Run `steps` steps; record every UNet output, every model_output given to step, and the pipeline's
    guidance tensor and do_classifier_free_guidance at the end of the loop."""
    raw, guided = [], []
    handle = pipe.unet.register_forward_hook(lambda module, args, out: raw.append(out[0].clone()))
    real_step = pipe.scheduler.step

    def step(model_output, t, sample, *args, **kwargs):
        guided.append(model_output.clone())
        return real_step(model_output, t, sample, *args, **kwargs)

    pipe.scheduler.step = step  # an instance attribute over the class's method
    try:
        with torch.no_grad():
            pipe(
                _image(),
                height=SIZE,
                width=SIZE,
                num_frames=frames,
                num_inference_steps=steps,
                min_guidance_scale=lo,
                max_guidance_scale=hi,
                num_videos_per_prompt=batch,
                decode_chunk_size=frames,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            )
    finally:
        handle.remove()
        del pipe.scheduler.step
    return {
        "raw": [r.numpy() for r in raw],
        "guided": [g.numpy() for g in guided],
        "scale": pipe.guidance_scale.numpy(),
        "do_cfg": bool(pipe.do_classifier_free_guidance),
    }


# (min, max, frames, batch, steps); one pipeline run each (~10 s on a busy 2-core machine)
CASES = [
    (1.0, 3.0, 3, 1, 2),  # diffusers' defaults
    (0.7, 7.3, 4, 2, 1),  # batch 2: [uncond x2, cond x2]
    (1.5, 3.0, 1, 1, 1),  # one frame: the ramp is min alone (with min <= 1 < max diffusers breaks)
    (1.0, 1.0 + 1e-6, 2, 1, 1),  # CFG on: max > 1 by a hair
    (1.0, 1.0, 2, 1, 1),  # CFG off
    (0.5, 0.9, 2, 2, 1),  # CFG off, batch 2
]


@pytest.mark.parametrize("lo, hi, frames, batch, steps", CASES)
def test_guided_output_is_the_pipelines(tiny_pipe, lo, hi, frames, batch, steps):
    rec = _record(tiny_pipe, lo, hi, frames, batch, steps)
    cfg_on = do_cfg(hi)
    assert cfg_on == rec["do_cfg"]
    scale = guidance.guidance_scale(lo, hi, frames, batch)
    # the pipeline's own per-frame tensor: one of ATen's two linspace kernels (ours: the fused one)
    assert scale.shape == rec["scale"].shape == (batch, frames, 1, 1, 1) and scale.dtype == np.float32
    _assert_torch_linspace(scale[:, :, 0, 0, 0], rec["scale"][:, :, 0, 0, 0], lo, hi, frames)
    assert len(rec["raw"]) == len(rec["guided"]) == steps
    for raw, guided in zip(rec["raw"], rec["guided"]):
        if not cfg_on:  # one UNet batch, used as is
            assert raw.shape[0] == batch
            np.testing.assert_array_equal(raw, guided)
            continue
        # the UNet batch is [unconditional (zero image embedding and latent), conditional]
        assert raw.shape[0] == 2 * batch
        # with the pipeline's scale, bit-identical: the same float32 subtract, multiply and add, in order
        ours = guidance.combine(raw[:batch], raw[batch:], rec["scale"])
        assert ours.dtype == guided.dtype
        np.testing.assert_array_equal(ours, guided)


def _assert_torch_linspace(ours: np.ndarray, ref: np.ndarray, lo: float, hi: float, frames: int) -> None:
    """Each row of ours is ATen's AVX2/AVX-512 linspace (one rounding per value, as euler.linspace_f32);
    torch's is that or, on its default kernel (x86 without AVX2), two roundings: then within
    linspace_bound, plus one rounding of the cast to ref's dtype on each side."""
    fused = guidance.guidance_scale(lo, hi, frames, dtype=ref.dtype)[0, :, 0, 0, 0]
    unfused = unfused_linspace(lo, hi, frames).astype(ref.dtype)
    cast = 2.0 ** -np.finfo(ref.dtype).nmant * max(abs(lo), abs(hi))  # one ulp at the largest value
    for row, ref_row in zip(ours, ref):
        np.testing.assert_array_equal(row, fused)
        assert np.array_equal(ref_row, fused) or np.array_equal(ref_row, unfused)
        assert np.abs(row.astype(np.float64) - ref_row).max() <= linspace_bound(lo, hi) + cast


@pytest.mark.parametrize("frames", [1, 2, 14, 25])
@pytest.mark.parametrize("lo, hi", [(1.0, 3.0), (1.0, 2.5), (1.5, 3.0), (0.7, 7.3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scale_is_torch_linspace(frames, lo, hi, dtype):
    """Frame counts the pipeline run above does not reach; fp16 as the pipeline casts to latents' dtype."""
    ref = torch.linspace(lo, hi, frames).to(dtype).numpy()
    ours = guidance.guidance_scale(lo, hi, frames, 2, dtype=ref.dtype)
    assert ours.shape == (2, frames, 1, 1, 1) and ours.dtype == ref.dtype
    _assert_torch_linspace(ours[:, :, 0, 0, 0], np.stack([ref, ref]), lo, hi, frames)
