"""LTX-Video's four components as svd_trt ComponentSpecs (one description each; numpy only).

Symbolic dims: B batch (1..2: CFG runs [negative, positive]), L text tokens, S video tokens,
F / H / W pixels (F = temporal_ratio * (f - 1) + 1), f / h / w latents. Names and shapes are
the contract between the port (families/ltx/port) and the numpy runtime (LTX_CONTRACT.md).
"""

from __future__ import annotations

import functools

import numpy as np

from svd_trt.families.ltx.config import LTXConfig
from svd_trt.limits import RangeError, Request, check_pair, check_pixel_ranges, requested, span
from svd_trt.spec import TARGETS, ComponentSpec, Span, TensorSpec, Tolerance, draw_from

CFG_BATCH = Span(1, 2, 2)
# diffusers' LTXPipeline.__call__ defaults: the sizes TensorRT profiles are tuned for by default.
DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_TEXT = 161, 512, 704, 128  # guidance on: [negative, positive] in one call; off: 1


def token_ids(vocab_size: int, shape: tuple[int, ...], rng: np.random.Generator, timesteps=None) -> np.ndarray:
    """T5 token ids anywhere in the vocabulary."""
    return rng.integers(0, vocab_size, shape)


def text_mask(shape: tuple[int, ...], rng: np.random.Generator, timesteps=None) -> np.ndarray:
    """Padded prompts: 1s then 0s per row, at least one real token."""
    lengths = rng.integers(1, shape[-1] + 1, shape[:-1] + (1,))
    return (np.arange(shape[-1]) < lengths).astype(np.float64)


def flow_timestep(shape: tuple[int, ...], rng: np.random.Generator, timesteps: np.ndarray | None) -> np.ndarray:
    """The transformer's timesteps: the schedule's where given, else anywhere in [0, 1000]."""
    drawn = draw_from(timesteps, rng, shape)
    return drawn if drawn is not None else rng.uniform(0.0, 1000.0, shape)


def decode_timestep(shape: tuple[int, ...], rng: np.random.Generator, timesteps=None) -> np.ndarray:
    """A timestep-conditioned decoder's timestep: LTX's configs use 0 .. 0.05."""
    return rng.uniform(0.0, 0.1, shape)


def _precision(gpu: str) -> dict[str, str]:
    """fp32 on the CPU targets (ONNX Runtime's CPU kernels are fp32), `gpu` on the GPU ones."""
    return {t: ("fp32" if t in ("onnxruntime", "torch-cpu") else gpu) for t in TARGETS}


# Tolerance rows, engine vs the fp32 port (Polygraphy: an element fails only past both atol and
# rtol), in the output's units. Scales: text_embeds are RMS-normed, O(1) times the final norm's
# weight; noise_pred (a velocity) ~unit std; the posterior mean/std and the frames O(1).
# - fp32: only op order, fusions and conv algorithms differ: ~1e-6 of the scale per call on the
#   tiny models (measured by tests/families/ltx), ~1e-5..1e-4 through 24 T5 / 28 DiT blocks.
#   1e-3 keeps that margin and still catches a wrong weight or epsilon (~1e-2).
# - fp16: unit roundoff 2^-11 = 4.9e-4 per rounding, re-injected by every matmul of 24 / 28
#   blocks; with the fp32 islands (norm statistics, RoPE, softmax, timestep embedding, T5's wo and
#   residual stream) the worst element lands near 1e-2 of the scale: 2e-2 (T5, shallower output
#   path through fp32 residuals) and 3e-2 (the DiT). The VAE runs fp32 on every target; its fp16
#   row exists only so a forced fp16 build is checked, at SVD's VAE level.
TOLERANCE = {
    "text_encoder": {"fp32": Tolerance(1e-3, 1e-3), "fp16": Tolerance(2e-2, 2e-2)},
    "transformer": {"fp32": Tolerance(1e-3, 1e-3), "fp16": Tolerance(3e-2, 3e-2)},
    "vae_encoder": {"fp32": Tolerance(1e-3, 1e-3), "fp16": Tolerance(2e-2, 2e-2)},
    "vae_decoder": {"fp32": Tolerance(1e-3, 1e-3), "fp16": Tolerance(2e-2, 2e-2)},
}


def component_specs(cfg: LTXConfig) -> dict[str, ComponentSpec]:
    """The four components' specs for one model config, in the order the pipeline runs them."""
    tc, t5 = cfg.transformer, cfg.text_encoder
    lat = cfg.latent_channels
    latent_dims = ("B", lat, "f", "h", "w")
    video_dims = ("B", 3, "F", "H", "W")
    decoder_inputs = (TensorSpec("latents", latent_dims),)
    if cfg.vae.timestep_conditioning:
        decoder_inputs += (TensorSpec("timestep", ("B",), dist=decode_timestep, fixed_dtype="float32"),)
    f32 = "float32"
    return {
        "text_encoder": ComponentSpec(
            "text_encoder",
            source="text_encoder",
            method=None,
            inputs=(
                TensorSpec("input_ids", ("B", "L"), dist=functools.partial(token_ids, t5.vocab_size), fixed_dtype="int64"),
            ),
            outputs=(TensorSpec("text_embeds", ("B", "L", t5.d_model)),),
            batch=CFG_BATCH,
            frames="num_frames",
            precision=_precision("fp16"),
            tolerance=TOLERANCE["text_encoder"],
        ),
        "transformer": ComponentSpec(
            "transformer",
            source="transformer",
            method=None,
            inputs=(
                TensorSpec("hidden_states", ("B", "S", tc.in_channels)),
                TensorSpec("encoder_hidden_states", ("B", "L", tc.caption_channels)),
                # fp32 in every precision: sinusoids of t up to 1000, RoPE angles up to ~1.6e4 rad
                TensorSpec("timestep", ("B", "S"), dist=flow_timestep, fixed_dtype=f32),
                TensorSpec("encoder_attention_mask", ("B", "L"), dist=text_mask, fixed_dtype=f32),
                TensorSpec("rope_cos", ("B", "S", tc.inner_dim), dist="signed_unit", fixed_dtype=f32),
                TensorSpec("rope_sin", ("B", "S", tc.inner_dim), dist="signed_unit", fixed_dtype=f32),
            ),
            outputs=(TensorSpec("noise_pred", ("B", "S", tc.out_channels)),),
            batch=CFG_BATCH,
            frames="num_frames",
            precision=_precision("fp16"),
            tolerance=TOLERANCE["transformer"],
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder",
            source="vae",
            method="encode",
            inputs=(TensorSpec("image", video_dims, dist="signed_unit"),),
            outputs=(TensorSpec("latent_mean", latent_dims), TensorSpec("latent_std", latent_dims)),
            batch=Span(1, 1, 2),
            frames="num_frames",
            precision=_precision("fp32"),  # RMS eps 1e-8 is below fp16's smallest subnormal
            tolerance=TOLERANCE["vae_encoder"],
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            source="vae",
            method="decode",
            inputs=decoder_inputs,
            outputs=(TensorSpec("frames", video_dims),),
            batch=Span(1, 1, 2),
            frames="num_frames",
            precision=_precision("fp32"),
            tolerance=TOLERANCE["vae_decoder"],
        ),
    }


def video_tokens(cfg: LTXConfig, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """S: tokens after diffusers' _pack_latents with the transformer's patch sizes."""
    p, pt = cfg.transformer.patch_size, cfg.transformer.patch_size_t
    return (latent_frames // pt) * (latent_height // p) * (latent_width // p)


def latent_grid(cfg: LTXConfig, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(F', H', W'): F' = (F - 1) // temporal_ratio + 1, H' = H // spatial_ratio (prepare_latents)."""
    s, r = cfg.spatial_ratio, cfg.temporal_ratio
    return (num_frames - 1) // r + 1, height // s, width // s


def sizes_for(
    cfg: LTXConfig, batch: int, num_frames: int, height: int, width: int, text_len: int
) -> dict[str, int]:
    """Concrete values of every symbolic dim for a request (num_frames = k * temporal ratio + 1)."""
    f, h, w = latent_grid(cfg, num_frames, height, width)
    return {
        "B": batch,
        "L": text_len,
        "F": num_frames,
        "H": height,
        "W": width,
        "f": f,
        "h": h,
        "w": w,
        "S": video_tokens(cfg, f, h, w),
    }


def trace_sizes(cfg: LTXConfig) -> dict[str, int]:
    """The shape the exporter traces at: B, f > 1, h != w, L != S, so no axis is taken for another."""
    return sizes_for(cfg, 2, 2 * cfg.temporal_ratio + 1, 2 * cfg.spatial_ratio, 3 * cfg.spatial_ratio, 6)


def served_limits(cfg: LTXConfig, request: Request, bounded: bool) -> dict[str, Span]:
    """Validated spans of the request sizes (LTXOptions names).

    `bounded` (TensorRT: every engine needs a max): an unset range is diffusers' default request
    (161 frames of 512x704, 128 tokens). Unbounded (ONNX Runtime): any size >= the smallest valid.
    """
    s, r = cfg.spatial_ratio, cfg.temporal_ratio
    frames = requested(request, "num_frames", (DEFAULT_FRAMES,) * 2 if bounded else (1, None))
    height = requested(request, "height", (DEFAULT_HEIGHT,) * 2 if bounded else (s, None))
    width = requested(request, "width", (DEFAULT_WIDTH,) * 2 if bounded else (s, None))
    text = requested(request, "max_sequence_length", (DEFAULT_TEXT,) * 2 if bounded else (1, None))
    for option, pair in (("--num-frames", frames), ("--height", height), ("--width", width), ("--max-sequence-length", text)):
        check_pair(pair, option)
    check_pixel_ranges(height, width, s)
    lo, hi = frames
    if (lo - 1) % r or (hi is not None and (hi - 1) % r):
        raise RangeError(f"--num-frames {lo}:{hi}: this model needs 1 + a multiple of {r} frames")
    return {
        "num_frames": span(frames, DEFAULT_FRAMES),  # 161, or a bound of the range: 1 + a multiple of r
        "height": span(height, DEFAULT_HEIGHT, s),
        "width": span(width, DEFAULT_WIDTH, s),
        "max_sequence_length": span(text, DEFAULT_TEXT),
    }
