"""The T5 encoder port against transformers' T5EncoderModel, loaded from a saved snapshot."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import rel_err
from ltx_reference import reference_pipeline, reference_t5, save_snapshot

from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.port.checkpoint import load_component
from svd_trt.families.ltx.port.t5 import T5EncoderModel

# fp32 vs fp32 on identical weights: the port and transformers differ only in the order of a few
# reductions (SDPA vs matmul + softmax, fused vs written-out RMS norm), ~1e-7 relative per op over
# 2 blocks of 32-wide dot products; measured <= 4e-7 of the output scale. 1e-5 leaves a 25x margin
# and still fails a wrong epsilon, bucket or weight by orders of magnitude (~1e-2).
T5_TOL = 1e-5

# (batch, tokens): one token; a short padded prompt; 40 tokens, past max_distance 16 so the
# logarithmic buckets and their clip to the last bucket are used.
SHAPES = [(1, 1), (2, 7), (2, 40)]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    cfg = preset("tiny")
    pipe = reference_pipeline(cfg)
    return cfg, pipe.text_encoder, save_snapshot(pipe, tmp_path_factory.mktemp("ltx-tiny"))


def _ids(vocab: int, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch,length", SHAPES)
def test_text_embeds_match_transformers(snapshot, batch: int, length: int) -> None:
    cfg, ref, path = snapshot
    ours = load_component(path, "text_encoder")
    ids = _ids(cfg.text_encoder.vocab_size, batch, length)
    with torch.no_grad():
        expected = ref(ids).last_hidden_state
        got = ours(ids)
    assert got.shape == (batch, length, cfg.text_encoder.d_model)
    err = rel_err(got, expected)
    print(f"t5 B={batch} L={length}: rel err {err:.2e}")
    assert err <= T5_TOL


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_other_feed_forwards_and_sdpa_reference(feed_forward_proj: str) -> None:
    """Original T5's relu feed-forward (T5DenseActDense) too, against transformers' SDPA path."""
    cfg = dataclasses.replace(preset("tiny").text_encoder, feed_forward_proj=feed_forward_proj)
    ref = reference_t5(cfg, attn="sdpa")
    ours = T5EncoderModel(cfg).eval()
    state = ref.state_dict()
    del state["encoder.embed_tokens.weight"]  # the tied copy of shared.weight
    ours.load_state_dict(state, strict=True)
    ids = _ids(cfg.vocab_size, 2, 23)
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).last_hidden_state) <= T5_TOL
