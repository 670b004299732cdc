"""Latent-side host math against diffusers: the pipelines' static helpers, then whole LTXPipeline and
LTXImageToVideoPipeline runs (tiny random transformer and VAE) replayed step by step with our functions.

The replays record every transformer and VAE call of diffusers' run; ours must produce the same
transformer inputs (packed latents, per-token timesteps) at every step, the same decoder inputs and the
same frames, bit for bit: every operation on both sides is the same IEEE float32 operation (+, -, *, /)
in the same order, on any CPU. The one exception is guidance_rescale's standard deviation (a
reduction: summation order differs), bounded where it is tested.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx import rescale_noise_cfg as diffusers_rescale
from ltx_runtime_models import (
    CAPTION_CHANNELS,
    LATENT_CHANNELS,
    Recorder,
    one_torch_thread,
    tiny_transformer,
    tiny_vae,
)
from PIL import Image
from test_ltx_flow_match import LTX

from svd_trt.families.ltx import flow_match as fm
from svd_trt.families.ltx import latents as lat
from svd_trt.families.ltx.config import FlowMatchSchedulerConfig
from svd_trt.families.ltx.image_preprocess import video_pixel_values

U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize("patch, patch_t", ((1, 1), (2, 1), (2, 2), (1, 3)))
def test_pack_unpack_are_diffusers(patch, patch_t):
    x = torch.randn(2, 3, 6 * patch_t, 4 * patch, 6 * patch)
    ref = LTXPipeline._pack_latents(x, patch, patch_t).numpy()
    ours = lat.pack(x.numpy(), patch, patch_t)
    np.testing.assert_array_equal(ours, ref)
    # diffusers' unpack takes the token grid; it inverts pack
    grid = (6, 4, 6)
    ref_back = LTXPipeline._unpack_latents(torch.from_numpy(ref), *grid, patch, patch_t).numpy()
    np.testing.assert_array_equal(lat.unpack(ours, *grid, patch, patch_t), ref_back)
    np.testing.assert_array_equal(ref_back, x.numpy())


@pytest.mark.parametrize("scaling_factor", (1.0, 0.7))
def test_normalize_denormalize_are_diffusers(scaling_factor):
    x = torch.randn(2, 4, 3, 2, 5)
    mean, std = torch.randn(4), torch.rand(4) + 0.5
    ref = LTXPipeline._normalize_latents(x, mean, std, scaling_factor).numpy()
    np.testing.assert_array_equal(lat.normalize(x.numpy(), mean.numpy(), std.numpy(), scaling_factor), ref)
    ref = LTXPipeline._denormalize_latents(x, mean, std, scaling_factor).numpy()
    np.testing.assert_array_equal(lat.denormalize(x.numpy(), mean.numpy(), std.numpy(), scaling_factor), ref)


def _rescale_bound(cfg: np.ndarray, text: np.ndarray, phi: float, ref: np.ndarray) -> np.ndarray:
    """|ours - diffusers| of rescale_noise_cfg, per element.

    Each std is a float64 sum (ours) or torch's reduction accumulated in double, rounded once to
    float32: at most 1 ulp (2u relative) apart, so the ratio is within 5u (two roundings each plus
    the division), and phi * cfg * ratio + (1 - phi) * cfg within phi * 5u |cfg * ratio| plus
    1/2 ulp of each product and of the sum on each side.
    """
    axes = tuple(range(1, cfg.ndim))
    ratio = text.std(axis=axes, ddof=1, keepdims=True) / cfg.std(axis=axes, ddof=1, keepdims=True)
    rescaled = np.abs(cfg * ratio)
    return phi * 5 * U * rescaled + 2 * U * (phi * rescaled + (1 - phi) * np.abs(cfg) + np.abs(ref))


def test_rescale_noise_cfg():
    g = torch.Generator().manual_seed(0)
    cfg, text = torch.randn(2, 60, 8, generator=g), torch.randn(2, 60, 8, generator=g) * 3
    ref = diffusers_rescale(cfg, text, guidance_rescale=0.7).numpy()
    ours = lat.rescale_noise_cfg(cfg.numpy(), text.numpy(), 0.7)
    assert np.all(np.abs(ours - ref) <= _rescale_bound(cfg.numpy(), text.numpy(), 0.7, ref))


def test_draws_replace_without_shifting_the_others():
    shapes = lat.draw_shapes((2, 8, 3, 4, 5), num_images=1, timestep_conditioning=True)
    assert list(shapes) == ["encoder_noise", "latents", "decode_noise"]
    assert shapes["encoder_noise"] == (1, 8, 1, 4, 5)
    drawn = lat.draw(np.random.default_rng(3), shapes)
    given = np.zeros(shapes["latents"], np.float32)
    replayed = lat.draw(np.random.default_rng(3), shapes, {"latents": given})
    np.testing.assert_array_equal(replayed["latents"], given)
    np.testing.assert_array_equal(replayed["decode_noise"], drawn["decode_noise"])
    with pytest.raises(ValueError, match="decode_noise has shape"):
        lat.draw(np.random.default_rng(3), shapes, {"decode_noise": given[:1]})


# ---------------------------------------------------------------- whole pipelines, replayed

HEIGHT, WIDTH, NUM_FRAMES, STEPS = 32, 64, 9, 3  # diffusers requires multiples of 32
SPATIAL = TEMPORAL = 4  # the tiny VAE's ratios


def _prompt_embeds(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(2, 6, CAPTION_CHANNELS, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    return {
        "negative_prompt_embeds": embeds[:1],
        "negative_prompt_attention_mask": mask[:1],
        "prompt_embeds": embeds[1:],
        "prompt_attention_mask": mask[1:],
    }


def _run(pipe_cls, scheduler_config, guidance_scale, guidance_rescale, timestep_conditioning, image=None):
    vae, transformer = tiny_vae(timestep_conditioning), tiny_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    pipe = pipe_cls(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    calls = Recorder(transformer), Recorder(vae, "decode"), Recorder(vae, "encode")
    extra = {} if image is None else {"image": image}
    video = pipe(
        **extra,
        **_prompt_embeds(),
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        decode_timestep=0.05,
        decode_noise_scale=0.025,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    return vae, calls, video


def _replay_loop(transformer_calls, x, schedule, guidance_scale, guidance_rescale, mask=None, grid=None):
    """Our sampling loop fed diffusers' recorded transformer outputs; checks each call's inputs.

    Bit for bit, except with guidance_rescale (its std is a reduction, see _rescale_bound): then each
    step's latents are checked within the bound that step's rescale difference allows, and the loop
    continues from diffusers' latents (teacher forcing), so each step's bound stays local.
    """
    do_cfg = guidance_scale > 1
    b, s, _ = x.shape
    bound = 0.0
    assert len(transformer_calls) == len(schedule.timesteps)
    for i, (_, kwargs, out) in enumerate(transformer_calls):
        ref_hidden = kwargs["hidden_states"].numpy()
        hidden = np.concatenate([x, x]) if do_cfg else x
        assert np.all(np.abs(ref_hidden - hidden) <= bound)
        if guidance_rescale > 0:
            x = ref_hidden[:b]
        else:
            np.testing.assert_array_equal(ref_hidden, hidden)
        cfg_mask = None if mask is None else (np.concatenate([mask, mask]) if do_cfg else mask)
        t = lat.token_timesteps(schedule.timesteps[i], len(hidden), s, cfg_mask)
        ref_t = kwargs["timestep"].numpy()
        np.testing.assert_array_equal(np.broadcast_to(ref_t.reshape(len(hidden), -1), t.shape), t)
        raw = out[0].float().numpy()
        v = lat.guide(raw, guidance_scale, guidance_rescale) if do_cfg else raw
        if mask is None:
            x_next = fm.step(v, x, schedule.sigmas[i], schedule.sigmas[i + 1])
        else:
            x_next = lat.step_after_first_frame(v, x, schedule.sigmas[i], schedule.sigmas[i + 1], grid)
        if guidance_rescale > 0:
            # x + dt * v: |dt| times v's bound, plus 1/2 ulp of the product and of the sum on each side
            dt = abs(float(schedule.sigmas[i + 1]) - float(schedule.sigmas[i]))
            cfg = lat.cfg_combine(raw, guidance_scale)
            v_bound = _rescale_bound(cfg, np.split(raw, 2)[1], guidance_rescale, v)
            bound = dt * v_bound + 2 * U * (dt * np.abs(v) + np.abs(x_next))
            bound = np.concatenate([bound, bound]) if do_cfg else bound
        x = x_next
    return x


def _replay_decode(vae, decode_calls, x, grid, decode_noise, video):
    z = lat.denormalize(
        lat.unpack(x, *grid), vae.latents_mean.numpy(), vae.latents_std.numpy(), vae.config.scaling_factor
    )
    z, temb = lat.decode_inputs(z, decode_noise, 0.05, 0.025)
    ((args, _, out),) = decode_calls
    np.testing.assert_array_equal(args[0].numpy(), z)
    if temb is None:
        assert args[1] is None
    else:
        np.testing.assert_array_equal(args[1].numpy(), temb)
    np.testing.assert_array_equal(lat.frames(out[0].numpy()), video)


@pytest.mark.parametrize(
    "guidance_scale, guidance_rescale, timestep_conditioning, shift",
    ((3.0, 0.0, True, "dynamic"), (1.0, 0.0, False, "fixed"), (4.0, 0.6, False, "dynamic")),
)
def test_text_to_video_is_diffusers_step_by_step(
    guidance_scale, guidance_rescale, timestep_conditioning, shift
):
    config = LTX if shift == "dynamic" else {**LTX, "use_dynamic_shifting": False, "shift": 3.0}
    vae, (tr, dec, _), video = _run(
        LTXPipeline, config, guidance_scale, guidance_rescale, timestep_conditioning
    )
    shape = lat.latent_shape(1, LATENT_CHANNELS, NUM_FRAMES, HEIGHT, WIDTH, TEMPORAL, SPATIAL)
    grid = shape[2:]
    # diffusers' draws from its one generator, in order: initial noise, then decode noise
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=g).numpy()
    decode_noise = torch.randn(shape, generator=g).numpy() if timestep_conditioning else None
    schedule = fm.make_schedule(
        FlowMatchSchedulerConfig.from_dict(config), STEPS, fm.video_sequence_length(*grid)
    )
    x = _replay_loop(tr.calls, lat.pack(noise), schedule, guidance_scale, guidance_rescale)
    if guidance_rescale > 0:
        return  # the decode of a not bit-identical loop: checked by the other cases
    _replay_decode(vae, dec.calls, x, grid, decode_noise, video)


@pytest.mark.parametrize("guidance_scale, timestep_conditioning", ((3.0, True), (1.0, False)))
def test_image_to_video_is_diffusers_step_by_step(guidance_scale, timestep_conditioning):
    """An input image of another size and aspect than the video's; frame 0 is the posterior sample."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (27, 41, 3), dtype=np.uint8))
    vae, (tr, dec, enc), video = _run(
        LTXImageToVideoPipeline, LTX, guidance_scale, 0.0, timestep_conditioning, image=image
    )
    shape = lat.latent_shape(1, LATENT_CHANNELS, NUM_FRAMES, HEIGHT, WIDTH, TEMPORAL, SPATIAL)
    grid = shape[2:]
    # the encoder's input is our preprocessed image
    ((args, _, posterior),) = enc.calls
    np.testing.assert_array_equal(args[0].numpy(), video_pixel_values(image, HEIGHT, WIDTH, SPATIAL))
    mean, std = posterior.latent_dist.mean.numpy(), posterior.latent_dist.std.numpy()
    # diffusers' draws, in order: the posterior's normal, the initial noise, the decode noise
    g = torch.Generator().manual_seed(0)
    encoder_noise = torch.randn(mean.shape, generator=g).numpy()
    noise = torch.randn(shape, generator=g).numpy()
    decode_noise = torch.randn(shape, generator=g).numpy() if timestep_conditioning else None
    assert lat.draw_shapes(shape, 1, timestep_conditioning)["encoder_noise"] == mean.shape
    image_latents = lat.normalize(
        lat.posterior_sample(mean, std, encoder_noise), vae.latents_mean.numpy(), vae.latents_std.numpy()
    )
    x, mask = lat.image_to_video_latents(image_latents, noise)
    assert mask.shape == (1, np.prod(grid)) and mask.sum() == grid[1] * grid[2]
    schedule = fm.make_schedule(FlowMatchSchedulerConfig.from_dict(LTX), STEPS, fm.video_sequence_length(*grid))
    x = _replay_loop(tr.calls, x, schedule, guidance_scale, 0.0, mask=mask, grid=grid)
    # frame 0 was never stepped: still the image's latents
    np.testing.assert_array_equal(lat.unpack(x, *grid)[:, :, 0], image_latents[:, :, 0])
    _replay_decode(vae, dec.calls, x, grid, decode_noise, video)
