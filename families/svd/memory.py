"""SVD's memory estimate: bytes one request needs on the host (fp32, ONNX Runtime on the CPU).

    need = weights still to load (svd_trt/memory.py adds them)
         + each component's working memory at the request's sizes: ONNX Runtime keeps every
           session's arena at its peak after a call, so the four add up
         + the pipeline's own arrays at their peak: the decoded frames three times (the decoder's
           chunks, their concatenation, the postprocessed copy), 36 bytes per pixel per frame

Working memory is the tensors alive together at a component's widest point, counted from the
architecture (families/svd/port/unet.py, vae.py, layers.py) in units of the widest level's
channels, with ONNX Runtime's planner and arena overhead measured on the small model (see the
constants). Measured against peak RSS: docs/memory.md. numpy-free.
"""

from __future__ import annotations

from svd_trt.families.svd.config import SVDConfig
from svd_trt.families.svd.options import GenerationOptions, request_shape
from svd_trt.memory import F32, Estimate
from svd_trt.options import flag

# UNet, per latent token of each of the B*F frames, in units of the first level's channels C0,
# at the level-0 transformer's feed-forward (its widest point): the transformer's input kept for
# its residual, the stream, the temporal block's transposed copy and its norm (4), GEGLU's value,
# gate and gelu(gate) at 4*C0 each (12), the time mixer's two weighted branches (2), and the
# level's skips (one per layer, one for conv_in): 18 + 1 per layer + 1 derived. ONNX Runtime
# measured 21 C0 on the small model (1 layer at level 0) and 24 C0 on SVD's UNet (2 layers):
# its planner keeps about 2 C0 more per layer than that count. The constants follow the
# measurements: 18 + 3 per layer.
UNET_TRANSFORMER_LIVE, UNET_LIVE_PER_LAYER = 18, 3
# A level 0 without transformers peaks in its SpatioTemporalResBlock: input, norm, conv outputs,
# the temporal branch's permuted copy and the blend (6).
UNET_RESNET_LIVE = 6
# VAE decoder, per output pixel of each frame of a chunk: the last up block's resnets and temporal
# blends at C0 channels (input, norm, conv, permuted copy, two weighted branches: 6 C0), or where
# the upsampler hands C1 channels to that block's first resnet (its input kept for the shortcut,
# GroupNorm, SiLU, the NCHWc reorder of the conv input: 4 C1; the conv's C0 output). Measured:
# 5.2..6.2 C0 on the small model (C0 = C1 = 32), 8.0..9.0 C0 on SVD's VAE (C0 = 128, C1 = 256;
# formula 9).
DECODER_LIVE_C0, DECODER_LIVE_C1 = 6, 4
# VAE encoder (batch 1), per input pixel: conv_in's output and a resnet's input, norm, SiLU and
# conv (5 C0) and the image itself (3). Measured 4.25 C0 on the small model, 3.3..5.0 C0 on
# SVD's VAE (ONNX Runtime's arena grows in doubling regions: single runs scatter by ~25%).
ENCODER_LIVE_C0 = 5
# The frames [F, H, W, 3] float32 exist three times during decode (chunks, concatenation,
# postprocessed copy), and about two latent-sized arrays [F, 4, h, w] beside them.
FRAME_COPIES = 3
LATENT_COPIES = 2


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, (tuple, list)) else value


def unet_bytes(cfg: SVDConfig, batch: int, frames: int, h: int, w: int, attention: str) -> int:
    """The UNet's working memory for [batch, frames, C, h, w]: its first level's widest point."""
    u = cfg.unet
    c0 = u.block_out_channels[0]
    transformer = u.down_block_types[0].startswith("CrossAttn")
    layers = _first(u.layers_per_block)
    live = (
        UNET_TRANSFORMER_LIVE + UNET_LIVE_PER_LAYER * layers if transformer else UNET_RESNET_LIVE + layers + 1
    )
    total = batch * frames * h * w * c0 * live * F32
    if attention == "standard":
        total += max(_unet_scores(cfg, batch, frames, h, w), default=0)
    return total


def _unet_scores(cfg: SVDConfig, batch: int, frames: int, h: int, w: int) -> list[int]:
    """Standard (unfused) attention: logits and probabilities [B*F, heads, L, L] per level, both alive."""
    u = cfg.unet
    heads = u.num_attention_heads
    out = []
    for i, kind in enumerate(u.down_block_types):
        if not kind.startswith("CrossAttn"):
            continue
        n = heads[i] if isinstance(heads, (tuple, list)) else heads
        tokens = -(-h // 2**i) * -(-w // 2**i)
        spatial = batch * frames * n * tokens * tokens
        temporal = batch * tokens * n * frames * frames
        out.append(2 * max(spatial, temporal) * F32)
    return out


def decoder_bytes(cfg: SVDConfig, chunk: int, height: int, width: int, attention: str) -> int:
    """The VAE decoder's working memory for one chunk: its full-resolution last level."""
    ch = cfg.vae.block_out_channels
    c0, c1 = ch[0], ch[1] if len(ch) > 1 else ch[0]
    per_pixel = max(DECODER_LIVE_C0 * c0, DECODER_LIVE_C1 * c1 + c0)
    total = chunk * height * width * per_pixel * F32
    if attention == "standard" and cfg.vae.layers_per_block >= 2:  # the mid attention runs (vae.py)
        tokens = (height // cfg.vae.scale_factor) * (width // cfg.vae.scale_factor)
        total += 2 * chunk * tokens * tokens * F32
    return total


def encoder_bytes(cfg: SVDConfig, height: int, width: int, attention: str) -> int:
    """The VAE encoder's working memory at batch 1 (the unconditional latent is zeros, not encoded)."""
    total = height * width * (ENCODER_LIVE_C0 * cfg.vae.block_out_channels[0] + 3) * F32
    if attention == "standard":
        tokens = (height // cfg.vae.scale_factor) * (width // cfg.vae.scale_factor)
        total += 2 * tokens * tokens * F32
    return total


def clip_bytes(cfg: SVDConfig) -> int:
    """CLIP at its fixed input size: a few layers' tokens and one layer's scores; batch 1."""
    c = cfg.clip
    tokens = (c.image_size // c.patch_size) ** 2 + 1
    return (8 * tokens * c.intermediate_size + 2 * c.num_attention_heads * tokens * tokens) * F32


def estimate(
    cfg: SVDConfig, opts: GenerationOptions, attention: str = "fused", host_activations: bool = True
) -> Estimate:
    """Bytes one resolved request needs: working memory per component and the pipeline's arrays.

    `attention`: "fused"
    (ONNX Runtime's MultiHeadAttention, no score matrix) or "standard" (MatMul/Softmax/MatMul,
    the TensorRT-target graphs). host_activations=False: the components run elsewhere (a GPU).
    """
    shape = request_shape(opts)
    s = cfg.vae.scale_factor
    h, w = shape.height // s, shape.width // s
    batch, frames, chunk = shape.batch, shape.frames, min(shape.decode_chunk, shape.frames)
    activations = {}
    if host_activations:
        activations = {
            "the UNet": unet_bytes(cfg, batch, frames, h, w, attention),
            "the VAE decoder": decoder_bytes(cfg, chunk, shape.height, shape.width, attention),
            "the VAE encoder": encoder_bytes(cfg, shape.height, shape.width, attention),
            "CLIP": clip_bytes(cfg),
        }
    pixels = frames * shape.height * shape.width
    arrays = FRAME_COPIES * pixels * 3 * F32 + LATENT_COPIES * frames * cfg.vae.latent_channels * h * w * F32
    where = f"{shape.frames} frames of {shape.height}x{shape.width}, decode chunk {shape.decode_chunk}"
    lower = f"{flag('height')}/{flag('width')}, {flag('num_frames')} or {flag('decode_chunk_size')}"
    return Estimate(0, activations, arrays, where, lower)
