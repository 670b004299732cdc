"""LTX-Video's memory estimate: bytes one request needs on the host (fp32, ONNX Runtime on the CPU).

    need = weights still to load (svd_trt/memory.py adds them: file sizes; external data is mapped
           and counts in RSS once touched)
         + each component's working memory at the request's sizes (ONNX Runtime keeps every
           session's arena at its peak after a call, so the four add up)
         + the pipeline's own arrays at their peak (frames, RoPE tables, latents)

Each component's working memory is its live set at its widest point, in units of the widest
tensor's width per token or per pixel, counted from the port (families/ltx/port/transformer.py,
vae.py, t5.py) and set from single-session measurements at two or three widths of each (the small
preset, a wider variant, and LTX-Video's real VAE; scripts/ltx_memory.py, docs/memory.md). ONNX
Runtime's arena grows by regions, so single runs scatter by ~10% around these constants.
"""

from __future__ import annotations

from svd_trt.families.ltx.config import LTXConfig
from svd_trt.families.ltx.options import LTXOptions, cfg_on
from svd_trt.families.ltx.spec import latent_grid, video_tokens
from svd_trt.families.ltx.tiled_decode import TileSizes
from svd_trt.memory import F32, Estimate
from svd_trt.options import flag

# Transformer, per token (video and text) of each batch row, in units of inner_dim. Counted: the
# stream and its residual, the modulated copy, q, k, v, their RMS norms and the RoPE rotation's
# temporaries (4 per rotated tensor), the attention output and to_out (about 14); the
# feed-forward's 4x hidden and its tanh-GELU temporaries (about 10); the per-token AdaLN: the
# timestep's 256 sinusoids, its MLP and the 6 x inner modulation with the 6 chunks Split copies
# out (about 8 at LTX's widths); the cross-attention's probabilities over the text (heads x L per
# token: 2 inner at LTX-2B's 32 heads x 128 tokens). Measured 28.4 .. 35.4 with inner 64 (4 heads)
# and 512 (8 x 64, LTX's head width) at 672 .. 14784 tokens, B 1 and 2: 32.
TRANSFORMER_LIVE = 32
# The standard-attention graph (TensorRT target) holds a [B, heads, S, S] score matrix twice
# (logits and probabilities); ONNX Runtime's fused node never does.
SCORE_COPIES = 2
# VAE decoder, per output pixel, in units of the finest level's channels per pixel (c / (p^2 pt):
# its last up block runs at H/p x W/p with c = decoder_block_out_channels[0] / upsample_factor[0];
# 1 for the small preset, 8 for the 0.9.5 VAE): the last block's resnet (input kept for the
# residual, RMS norm, modulation, SiLU, the time-padded conv input, the conv: 6), or the tail
# (conv_out's 3-channel output and its unpatchified copy, 6 floats per pixel, beside its input),
# whichever is wider; plus the frames ONNX Runtime returns (3). Measured per pixel: small (1 unit)
# 9.3 .. 10.8 floats (formula 10), a 2-unit decoder 12.9 (15), the real 0.9.5 decoder (8 units)
# 50 .. 54 (51).
DECODER_LIVE, DECODER_TAIL, DECODER_OUT = 6, 6, 3
# VAE encoder (image to video: one frame), per input pixel, in units of its first level's channels
# per pixel (block_out_channels[0] / p^2): a causal conv pads time with two copies of the first
# frame, so a single frame's conv inputs are 3x; with its resnet's input, norm and output, 14.5;
# plus the image (3). Measured: small (1 unit) 17, the real 0.9.5 encoder (8 units) 117. Its
# session is open for every request, so it is counted even for text to video (a few % at most).
ENCODER_LIVE, ENCODER_IMAGE = 14.5, 3
# T5: per token, the feed-forward's two d_ff projections and GELU, the stream and attention
# (6 d_model). Small next to its weights (T5-XXL: 57 MB at 2 x 128 tokens against 19 GB).
T5_LIVE_DFF, T5_LIVE_D = 3, 6
# Host arrays beside the decoder's output: the postprocessed frames (one copy of [F, H, W, 3]).
# With tiled decoding (families/ltx/tiled_decode.py) the kept frames, their concatenation and the
# last decoded window are alive together (two videos and a window; measured 0.88 .. 1.03 of it with
# the rest of the estimate), then the video and its postprocessed copy.
# RoPE's cos and sin [B, S, inner] are fed at every step; about 12 packed-latent arrays [S, C].
ROPE_TABLES, LATENT_COPIES = 2, 12


def transformer_bytes(cfg: LTXConfig, batch: int, tokens: int, text: int, attention: str) -> int:
    """The transformer's working memory for B rows of S video and L text tokens."""
    tc = cfg.transformer
    total = batch * (tokens + text) * tc.inner_dim * TRANSFORMER_LIVE * F32
    if attention == "standard":
        total += SCORE_COPIES * batch * tc.num_attention_heads * tokens * tokens * F32
    return total


def _decoder_units(cfg: LTXConfig) -> float:
    """The decoder's finest-level channels per output pixel."""
    vae = cfg.vae
    return vae.decoder_block_out_channels[0] / vae.upsample_factor[0] / (vae.patch_size**2 * vae.patch_size_t)


def decoder_bytes(cfg: LTXConfig, frames: int, height: int, width: int) -> int:
    """The VAE decoder's working memory for one call producing [frames, height, width] pixels."""
    units = _decoder_units(cfg)
    per_pixel = max(DECODER_LIVE * units, DECODER_TAIL + units) + DECODER_OUT
    return int(frames * height * width * per_pixel * F32)


def _window_frames(cfg: LTXConfig, frames: int) -> int | None:
    """Frames of one temporal window of the tiled decode (3 latent frames: 17), None when the video
    is one window's or shorter (no temporal tiling)."""
    tiles, r = TileSizes(), cfg.temporal_ratio
    latent_frames = (frames - 1) // r + 1
    if latent_frames <= tiles.min_num_frames // r:
        return None
    return (min(latent_frames, tiles.min_num_frames // r + 1) - 1) * r + 1


def decode_extent(cfg: LTXConfig, frames: int, height: int, width: int, tiling: bool) -> tuple[int, int, int]:
    """(frames, height, width) of the largest decoder call: the whole video, or with tiling one
    temporal window (diffusers' 16 + 1 frames: 3 latent frames) of one spatial tile (512 x 512),
    as families/ltx/tiled_decode.py cuts it with diffusers' default tile sizes."""
    if not tiling:
        return frames, height, width
    tiles = TileSizes()
    return _window_frames(cfg, frames) or frames, min(height, tiles.min_height), min(width, tiles.min_width)


def encoder_bytes(cfg: LTXConfig, height: int, width: int) -> int:
    """The VAE encoder's working memory on one image of height x width."""
    units = cfg.vae.block_out_channels[0] / cfg.vae.patch_size**2
    return int(height * width * (ENCODER_LIVE * units + ENCODER_IMAGE) * F32)


def t5_bytes(cfg: LTXConfig, batch: int, text: int, attention: str) -> int:
    t5 = cfg.text_encoder
    total = batch * text * (T5_LIVE_DFF * t5.d_ff + T5_LIVE_D * t5.d_model) * F32
    if attention == "standard":
        total += SCORE_COPIES * batch * t5.num_heads * text * text * F32
    return total


def array_bytes(
    cfg: LTXConfig, batch: int, tokens: int, frames: int, height: int, width: int, tiling: bool
) -> int:
    """The pipeline's own arrays at their peak (the decode), beside the decoder's returned frames."""
    video = frames * height * width * 3 * F32
    frames_held = video
    if tiling:
        window = _window_frames(cfg, frames)
        # no temporal windows: two rows of spatial tiles are alive beside the assembled rows instead
        extra = (
            window * height * width if window else 2 * frames * min(height, TileSizes().min_height) * width
        )
        frames_held = 2 * video + extra * 3 * F32
    rope = ROPE_TABLES * batch * tokens * cfg.transformer.inner_dim * F32
    return frames_held + rope + LATENT_COPIES * tokens * cfg.transformer.in_channels * F32


def estimate(
    cfg: LTXConfig, opts: LTXOptions, attention: str = "fused", host_activations: bool = True
) -> Estimate:
    """Bytes one resolved request needs: working memory per component and the pipeline's arrays.

    With decode_tiling the decoder's term is one tile's (a window of 17 frames of at most 512 x
    512): its arena is bounded there, whatever the video's size; the assembled frames still count
    whole in the arrays."""
    batch = 2 if cfg_on(opts.guidance_scale) else 1  # the CFG batch [negative, positive]
    f, h, w = latent_grid(cfg, opts.num_frames, opts.height, opts.width)
    tokens = video_tokens(cfg, f, h, w)
    frames = (f - 1) * cfg.temporal_ratio + 1
    activations = {}
    if host_activations:
        extent = decode_extent(cfg, frames, opts.height, opts.width, opts.decode_tiling)
        activations = {
            "the transformer": transformer_bytes(cfg, batch, tokens, opts.max_sequence_length, attention),
            "the VAE decoder": decoder_bytes(cfg, *extent),
            "the VAE encoder": encoder_bytes(cfg, opts.height, opts.width),
            "T5": t5_bytes(cfg, batch, opts.max_sequence_length, attention),
        }
    arrays = array_bytes(cfg, batch, tokens, frames, opts.height, opts.width, opts.decode_tiling)
    tiled = ", tiled decode" if opts.decode_tiling else ""
    where = f"{frames} frames of {opts.height}x{opts.width}, {tokens} video tokens{tiled}"
    lower = f"{flag('height')}/{flag('width')} or {flag('num_frames')}"
    if not opts.decode_tiling:
        lower += f", or add {flag('decode_tiling')}"
    return Estimate(0, activations, arrays, where, lower)
