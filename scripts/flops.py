"""Floating-point operations per SVD stage, counted from the architecture in the config.

Convention: 2 per multiply-add of every convolution, linear layer and attention product
(QK^T and PV), as torch.utils.flop_counter counts; normalisations, activations and
elementwise ops are left out (< 1%). The UNet's `variant`:
- "diffusers" (the model's work, every rate's numerator): the image embedding is projected
  once per frame (spatial cross-attention) and once per pixel (temporal), attended to as
  one key by every query, and the frame position embedding is made once per batch item;
- "port" (families/svd/port/layers.py; the torch fast path adds no FLOPs): cross-attention to the one
  image token is to_out(to_v(context)) once per batch item (softmax over one key is 1), and
  the position embedding is made once: 6.0 TFLOP (3.7%) less per CFG step at SVD-XT shapes.
tests/scripts/test_flops.py checks every count against torch's FLOP counter on the port (at
the full SVD-XT shapes, on the meta device) and on diffusers' UNet. SVD-XT, 576x1024, CFG:
159.9 TFLOP per UNet step (89.6 at 14 frames), 4.0 PFLOP per 25 steps; VAE decode 6.94
TFLOP per frame; VAE encode 2.6; CLIP 0.33.
"""

from __future__ import annotations

import math

from svd_trt.families.svd.config import CLIPConfig, SVDConfig, UNetConfig, VAEConfig
from svd_trt.families.svd.spec import DEFAULT_HEIGHT, DEFAULT_WIDTH

VARIANTS = ("diffusers", "port")


def conv(n: int, cin: int, cout: int, kernel: int, pixels: int) -> int:
    """n images, `kernel` taps (9 for 3x3, 3 for (3,1,1)), `pixels` output positions each."""
    return 2 * n * cin * cout * kernel * pixels


def linear(tokens: int, cin: int, cout: int) -> int:
    return 2 * tokens * cin * cout


def attention(n: int, heads: int, lq: int, lk: int, head_dim: int) -> int:
    """QK^T and PV for n independent sequences."""
    return 4 * n * heads * lq * lk * head_dim


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


# ----------------------------------------------------------------------------- UNet


def _st_resblock(n: int, cin: int, cout: int, temb: int, pixels: int) -> int:
    """SpatioTemporalResBlock: 3x3 resnet (+1x1 shortcut), then a (3,1,1) temporal resnet."""
    spatial = conv(n, cin, cout, 9, pixels) + conv(n, cout, cout, 9, pixels)
    spatial += conv(n, cin, cout, 1, pixels) if cin != cout else 0
    temporal = 2 * conv(n, cout, cout, 3, pixels)
    return spatial + temporal + 2 * linear(n, temb, cout)


def _st_transformer(
    batch: int, frames: int, pixels: int, c: int, heads: int, cross: int, layers: int, variant: str
) -> int:
    """TransformerSpatioTemporalModel: spatial and temporal blocks over T = B*F*pixels tokens."""
    n, t = batch * frames, batch * frames * pixels
    d = c // heads

    def self_attention(seqs: int, length: int) -> int:
        return 4 * linear(t, c, c) + attention(seqs, heads, length, length, d)

    def cross_attention(seqs: int, length: int) -> int:
        """`seqs` sequences of `length` queries; one context token each."""
        if variant == "port":  # to_out(to_v(context)) once per batch item, broadcast to every query
            return linear(batch, cross, c) + linear(batch, c, c)
        # diffusers copies the context per sequence (frame or pixel) and projects every copy
        return 2 * linear(t, c, c) + 2 * linear(seqs, cross, c) + attention(seqs, heads, length, 1, d)

    ff = linear(t, c, 8 * c) + linear(t, 4 * c, c)  # GEGLU in, then out
    spatial = self_attention(n, pixels) + cross_attention(n, pixels) + ff
    temporal = ff + self_attention(batch * pixels, frames) + cross_attention(batch * pixels, frames) + ff
    # time_pos_embed (c -> 4c -> c) of the frame index: diffusers embeds it per batch item, the port once
    pos_tokens = n if variant == "diffusers" else frames
    positions = linear(pos_tokens, c, 4 * c) + linear(pos_tokens, 4 * c, c)
    return 2 * linear(t, c, c) + positions + layers * (spatial + temporal)


def unet_flops(cfg: UNetConfig, batch: int, frames: int, h: int, w: int, variant: str = "diffusers") -> int:
    """One UNet call on sample [batch, frames, C, h, w] (latent h, w), as `variant` computes it."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
    ch = cfg.block_out_channels
    nb = len(ch)
    heads = _per_block(cfg.num_attention_heads, nb)
    cross = _per_block(cfg.cross_attention_dim, nb)
    layers = _per_block(cfg.layers_per_block, nb)
    tlayers = [_per_block(t, 1)[0] for t in _per_block(cfg.transformer_layers_per_block, nb)]
    temb, n = 4 * ch[0], batch * frames
    total = linear(batch, ch[0], temb) + linear(batch, temb, temb)
    total += linear(batch, cfg.projection_class_embeddings_input_dim, temb) + linear(batch, temb, temb)
    sizes = [(h, w)]
    for _ in range(nb - 1):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    px = [a * b for a, b in sizes]
    total += conv(n, cfg.in_channels, ch[0], 9, px[0])
    skips = [ch[0]]
    cin = ch[0]
    for i, kind in enumerate(cfg.down_block_types):
        for _ in range(layers[i]):
            total += _st_resblock(n, cin, ch[i], temb, px[i])
            if kind.startswith("CrossAttn"):
                total += _st_transformer(batch, frames, px[i], ch[i], heads[i], cross[i], tlayers[i], variant)
            cin = ch[i]
            skips.append(cin)
        if i < nb - 1:
            total += conv(n, cin, cin, 9, px[i + 1])
            skips.append(cin)
    total += 2 * _st_resblock(n, cin, cin, temb, px[-1])
    total += _st_transformer(batch, frames, px[-1], cin, heads[-1], cross[-1], tlayers[-1], variant)
    for i, kind in enumerate(cfg.up_block_types):
        j = nb - 1 - i
        cout = ch[j]
        for _ in range(layers[j] + 1):
            total += _st_resblock(n, cin + skips.pop(), cout, temb, px[j])
            if kind.startswith("CrossAttn"):
                total += _st_transformer(batch, frames, px[j], cout, heads[j], cross[j], tlayers[j], variant)
            cin = cout
        if i < nb - 1:
            total += conv(n, cin, cin, 9, px[j - 1])
    return total + conv(n, ch[0], cfg.out_channels, 9, px[0])


# ----------------------------------------------------------------------------- VAE and CLIP


def _resnet2d(n: int, cin: int, cout: int, pixels: int) -> int:
    shortcut = conv(n, cin, cout, 1, pixels) if cin != cout else 0
    return conv(n, cin, cout, 9, pixels) + conv(n, cout, cout, 9, pixels) + shortcut


def _mid_attention(n: int, c: int, pixels: int) -> int:
    """One head as wide as the block, over every pixel of an image."""
    return 4 * linear(n * pixels, c, c) + attention(n, 1, pixels, pixels, c)


def vae_encode_flops(cfg: VAEConfig, batch: int, height: int, width: int) -> int:
    """Encoder + quant_conv on [batch, 3, H, W]."""
    ch = cfg.block_out_channels
    hh, ww = height, width
    total = conv(batch, cfg.in_channels, ch[0], 9, hh * ww)
    cin = ch[0]
    for i, c in enumerate(ch):
        for _ in range(cfg.layers_per_block):
            total += _resnet2d(batch, cin, c, hh * ww)
            cin = c
        if i < len(ch) - 1:
            hh, ww = hh // 2, ww // 2  # pad right/bottom by one, 3x3 stride 2: H halves rounding down
            total += conv(batch, c, c, 9, hh * ww)
    px = hh * ww
    total += 2 * _resnet2d(batch, cin, cin, px) + _mid_attention(batch, cin, px)
    latent2 = 2 * cfg.latent_channels
    return total + conv(batch, cin, latent2, 9, px) + conv(batch, latent2, latent2, 1, px)


def _decoder_resblock(n: int, cin: int, cout: int, pixels: int) -> int:
    return _resnet2d(n, cin, cout, pixels) + 2 * conv(n, cout, cout, 3, pixels)


def vae_decode_flops(cfg: VAEConfig, frames: int, h: int, w: int) -> int:
    """Temporal decoder on latents [frames, C, h, w] (one chunk)."""
    rev = list(reversed(cfg.block_out_channels))
    px = h * w
    total = conv(frames, cfg.latent_channels, rev[0], 9, px)
    total += _decoder_resblock(frames, rev[0], rev[0], px)
    if cfg.layers_per_block >= 2:  # diffusers zips resnets[1:] with its one attention
        total += _mid_attention(frames, rev[0], px) + _decoder_resblock(frames, rev[0], rev[0], px)
    cin = rev[0]
    for i, c in enumerate(rev):
        for _ in range(cfg.layers_per_block + 1):
            total += _decoder_resblock(frames, cin, c, px)
            cin = c
        if i < len(rev) - 1:
            px *= 4
            total += conv(frames, c, c, 9, px)
    return (
        total
        + conv(frames, cin, cfg.out_channels, 9, px)
        + conv(frames, cfg.out_channels, cfg.out_channels, 3, px)
    )


def clip_flops(cfg: CLIPConfig, batch: int = 1) -> int:
    """CLIPVisionModelWithProjection on [batch, 3, S, S]."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    tokens, d = patches + 1, cfg.hidden_size
    total = conv(batch, cfg.num_channels, d, cfg.patch_size**2, patches)
    layer = 4 * linear(batch * tokens, d, d) + attention(
        batch, cfg.num_attention_heads, tokens, tokens, d // cfg.num_attention_heads
    )
    layer += linear(batch * tokens, d, cfg.intermediate_size) + linear(
        batch * tokens, cfg.intermediate_size, d
    )
    return total + cfg.num_hidden_layers * layer + linear(batch, d, cfg.projection_dim)


def run_flops(
    cfg: SVDConfig, frames: int, height: int, width: int, steps: int, chunk: int, cfg_batch: int = 2
) -> dict[str, float]:
    """FLOPs per stage of one generation; `unet_step` is one call at batch `cfg_batch`."""
    s = cfg.vae.scale_factor
    h, w = height // s, width // s
    chunks = [min(chunk, frames - i) for i in range(0, frames, chunk)]
    step = unet_flops(cfg.unet, cfg_batch, frames, h, w)
    return {
        "clip": clip_flops(cfg.clip),
        "vae_encode": vae_encode_flops(cfg.vae, 1, height, width),
        "unet_step": step,
        "unet": step * steps,
        "decode": sum(vae_decode_flops(cfg.vae, c, h, w) for c in chunks),
    }


def main() -> None:
    """Print the FLOPs per stage of one generation at the given shapes."""
    import argparse

    from svd_trt.families.svd.config import preset

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--size", default="full", choices=["tiny", "small", "full", "full-14"])
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--chunk", type=int, default=8)
    a = ap.parse_args()
    cfg = preset(a.size)
    for stage, n in run_flops(cfg, a.frames, a.height, a.width, a.steps, a.chunk).items():
        print(f"{stage:>10}: {n / 1e12:10.3f} TFLOP")
    s = cfg.vae.scale_factor
    for variant in VARIANTS:
        step = unet_flops(cfg.unet, 2, a.frames, a.height // s, a.width // s, variant)
        print(f"UNet CFG step, {variant:>9}: {step / 1e12:.3f} TFLOP")


if __name__ == "__main__":
    main()
