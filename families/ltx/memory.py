"""LTX-Video's memory estimate: bytes one request needs on the host (fp32, ONNX Runtime on the CPU).

    need = weights still to load (svd_trt/memory.py adds them)
         + each component's working memory at the request's sizes (ONNX Runtime keeps every
           session's arena at its peak after a call, so the four add up)
         + the pipeline's own arrays at their peak

The widest points, counted from the port (families/ltx/port/transformer.py, vae.py, t5.py) in
units of one activation of the widest tensor; the per-unit counts are measured on the small model
with ONNX Runtime (docs/memory.md). numpy-free.
"""

from __future__ import annotations

from svd_trt.families.ltx.config import LTXConfig
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.families.ltx.spec import latent_grid, video_tokens
from svd_trt.memory import F32, Estimate
from svd_trt.options import flag

# Transformer, per video token of each batch row, in units of inner_dim: the stream and its
# residual, the normed copy, q, k, v and the attention output (6), the feed-forward's 4x hidden
# and its GELU (8), the per-token AdaLN modulation (6 x inner: the timestep is per token), the
# RoPE cos and sin inputs (2): 24.
TRANSFORMER_LIVE = 24
# The standard-attention graph (TensorRT target) holds a [B, heads, S, S] score matrix twice
# (logits and probabilities); ONNX Runtime's fused node never does.
SCORE_COPIES = 2
# VAE decoder, per output pixel of each frame: the last up block's channels at the decoder's
# output resolution before depth-to-space (H / patch, W / patch), counted as its resnet's input,
# norm, conv and residual (4), times patch^2 pixels per position, plus the frames themselves (3).
DECODER_LIVE = 4
# T5: per token, the feed-forward's two d_ff projections and GELU, the stream and attention (6 d_model).
T5_LIVE_DFF, T5_LIVE_D = 3, 6
# The pipeline's arrays at the decode: the decoder's output, its transpose, the clipped frames.
FRAME_COPIES = 3


def transformer_bytes(cfg: LTXConfig, batch: int, tokens: int, text: int, attention: str) -> int:
    tc = cfg.transformer
    total = batch * (tokens + text) * tc.inner_dim * TRANSFORMER_LIVE * F32
    if attention == "standard":
        total += SCORE_COPIES * batch * tc.num_attention_heads * tokens * tokens * F32
    return total


def decoder_bytes(cfg: LTXConfig, frames: int, height: int, width: int) -> int:
    p = cfg.vae.patch_size
    last = cfg.vae.decoder_block_out_channels[0]
    return frames * (height // p) * (width // p) * last * DECODER_LIVE * F32 + 3 * frames * height * width * F32


def t5_bytes(cfg: LTXConfig, batch: int, text: int, attention: str) -> int:
    t5 = cfg.text_encoder
    total = batch * text * (T5_LIVE_DFF * t5.d_ff + T5_LIVE_D * t5.d_model) * F32
    if attention == "standard":
        total += SCORE_COPIES * batch * t5.num_heads * text * text * F32
    return total


def estimate(cfg: LTXConfig, opts: LTXOptions, attention: str = "fused", host_activations: bool = True) -> Estimate:
    """Bytes one resolved request needs: working memory per component and the pipeline's arrays.

    The decoder term is the whole video's (decode_tiling bounds it by one tile's; counted as the
    whole, an overestimate that never lets a request through that cannot fit)."""
    batch = 2 if opts.guidance_scale > 1 else 1
    f, h, w = latent_grid(cfg, opts.num_frames, opts.height, opts.width)
    tokens = video_tokens(cfg, f, h, w)
    frames = (f - 1) * cfg.temporal_ratio + 1
    activations = {}
    if host_activations:
        activations = {
            "the transformer": transformer_bytes(cfg, batch, tokens, opts.max_sequence_length, attention),
            "the VAE decoder": decoder_bytes(cfg, frames, opts.height, opts.width),
            "T5": t5_bytes(cfg, batch, opts.max_sequence_length, attention),
        }
    arrays = FRAME_COPIES * frames * opts.height * opts.width * 3 * F32 + 4 * tokens * cfg.latent_channels * F32
    terms = {**activations, "the frames": arrays}
    widest = max(terms, key=terms.get)
    where = f"{frames} frames of {opts.height}x{opts.width}, {tokens} video tokens"
    lower = f"{flag('height')}/{flag('width')} or {flag('num_frames')}"
    return Estimate(0, activations, arrays, widest, where, lower)
