"""The pipeline hands the transformer only the text positions some prompt of the CFG batch uses
(families/ltx/pipeline.py trim_text_padding): the rest is padding in every row, whose -10000
cross-attention bias gives it a softmax weight of exactly 0 in float32."""

from __future__ import annotations

import numpy as np
import torch

from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.pipeline import trim_text_padding
from svd_trt.families.ltx.port.transformer import LTXVideoTransformer3D
from svd_trt.families.ltx.rope import rope_cos_sin

# Dropping positions whose weights are exactly 0 changes only how the attention kernel blocks its
# sums over keys: fp32 reordering of <= 16 terms, a few units of 6e-8 relative. 1e-5 of the output
# scale keeps a wide margin on any CPU; dropping one real token moves it by ~1e-2 of that scale (below).
TRIM_TOL = 1e-5


def test_trims_to_the_last_position_any_prompt_uses():
    embeds = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    mask = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], np.float32)
    e, m = trim_text_padding(embeds, mask, floor=1)
    assert e.shape == (2, 3, 3) and np.array_equal(e, embeds[:, :3]) and np.array_equal(m, mask[:, :3])
    # the engines' shortest text length is a floor (a TensorRT profile's minimum)
    assert trim_text_padding(embeds, mask, floor=5)[1].shape == (2, 5)
    # a row with no token attends to every position evenly: nothing may be dropped
    empty = mask.copy()
    empty[0] = 0
    assert trim_text_padding(embeds, empty, floor=1)[1].shape == (2, 6)


def _transformer_inputs(length: int, used: tuple[int, int], seed: int = 0):
    cfg = preset("tiny").transformer
    g = torch.Generator().manual_seed(seed)
    f, h, w = 2, 3, 4
    cos, sin = rope_cos_sin(f, h, w, cfg.inner_dim, 25.0, 8, 32, batch_size=2)
    mask = torch.zeros(2, length)
    for row, n in enumerate(used):
        mask[row, :n] = 1
    return dict(
        hidden_states=torch.randn(2, f * h * w, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(2, length, cfg.caption_channels, generator=g),
        timestep=torch.full((2, f * h * w), 700.0),
        encoder_attention_mask=mask,
        rope_cos=torch.from_numpy(cos),
        rope_sin=torch.from_numpy(sin),
    )


def test_the_transformer_sees_no_difference():
    torch.manual_seed(0)
    model = LTXVideoTransformer3D(preset("tiny").transformer).eval()
    full = _transformer_inputs(48, used=(1, 9))  # CFG: an empty negative prompt (its EOS) and a prompt
    e, m = trim_text_padding(full["encoder_hidden_states"].numpy(), full["encoder_attention_mask"].numpy(), 1)
    assert e.shape[1] == 9
    trimmed = dict(full, encoder_hidden_states=torch.from_numpy(e), encoder_attention_mask=torch.from_numpy(m))
    with torch.no_grad():
        expected = model(**full)
        got = model(**trimmed)
        # control: one more position cut is a real token of the longer prompt
        cut = dict(trimmed, encoder_hidden_states=trimmed["encoder_hidden_states"][:, :8])
        cut["encoder_attention_mask"] = trimmed["encoder_attention_mask"][:, :8]
        wrong = model(**cut)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= TRIM_TOL * scale
    assert (wrong - expected).abs().max().item() > 100 * TRIM_TOL * scale
