"""LTX's component specs: the contract's names and shapes, sizes, and realistic sample inputs."""

from __future__ import annotations

import numpy as np

from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.spec import component_specs, sizes_for, trace_sizes


def test_sizes_follow_the_vae_ratios_and_the_packing() -> None:
    cfg = preset("full")
    # diffusers' defaults: 161 frames at 512x704 -> 21 x 16 x 22 latents, one token each (patch 1)
    sizes = sizes_for(cfg, 2, 161, 512, 704, 128)
    assert (sizes["f"], sizes["h"], sizes["w"], sizes["S"], sizes["L"]) == (21, 16, 22, 21 * 16 * 22, 128)
    tiny = sizes_for(preset("tiny"), 1, 9, 8, 12, 5)
    assert (tiny["f"], tiny["h"], tiny["w"], tiny["S"]) == (3, 2, 3, 18)


def test_trace_sizes_give_every_axis_its_own_value() -> None:
    """A size of 1, or two axes traced at one value, could be frozen or confused by the exporter."""
    for name in ("tiny", "tiny-32x8", "full"):
        sizes = trace_sizes(preset(name))
        assert sizes["B"] > 1 and sizes["f"] > 1 and sizes["h"] != sizes["w"] and sizes["L"] != sizes["S"]


def test_names_and_dims_are_the_contract() -> None:
    cfg = preset("tiny-32x8")
    specs = component_specs(cfg)
    assert list(specs) == ["text_encoder", "transformer", "vae_encoder", "vae_decoder"]
    io = {n: (s.input_names, s.output_names) for n, s in specs.items()}
    assert io == {
        "text_encoder": (["input_ids"], ["text_embeds"]),
        "transformer": (
            [
                "hidden_states",
                "encoder_hidden_states",
                "timestep",
                "encoder_attention_mask",
                "rope_cos",
                "rope_sin",
            ],
            ["noise_pred"],
        ),
        "vae_encoder": (["image"], ["latent_mean", "latent_std"]),
        "vae_decoder": (["latents", "timestep"], ["frames"]),  # a timestep-conditioned decoder
    }
    assert component_specs(preset("tiny"))["vae_decoder"].input_names == ["latents"]
    dynamic = specs["transformer"].dynamic_axes()
    assert dynamic["hidden_states"] == {0: "B", 1: "S"} and dynamic["encoder_attention_mask"] == {
        0: "B",
        1: "L",
    }
    assert specs["vae_decoder"].dynamic_axes()["frames"] == {0: "B", 2: "F", 3: "H", 4: "W"}
    assert {t: specs[t].precision_on("tensorrt") for t in specs} == {
        "text_encoder": "fp16",
        "transformer": "fp16",
        "vae_encoder": "fp32",
        "vae_decoder": "fp32",
    }


def test_sample_inputs_are_in_the_ranges_the_pipeline_feeds() -> None:
    cfg = preset("tiny-32x8")
    specs = component_specs(cfg)
    sizes = sizes_for(cfg, 2, 17, 64, 96, 9)
    rng = np.random.default_rng(0)
    ids = specs["text_encoder"].sample_inputs(sizes, rng)["input_ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < cfg.text_encoder.vocab_size
    dit = specs["transformer"].sample_inputs(sizes, rng, "fp16")
    assert dit["hidden_states"].dtype == np.float16 and dit["hidden_states"].shape == (2, sizes["S"], 8)
    mask = dit["encoder_attention_mask"]
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0} and (mask[:, 0] == 1).all()
    assert (np.diff(mask, axis=1) <= 0).all()  # real tokens first, padding after
    assert (
        dit["timestep"].dtype == np.float32 and 0 <= dit["timestep"].min() and dit["timestep"].max() <= 1000
    )
    assert all(dit[k].dtype == np.float32 for k in ("rope_cos", "rope_sin"))
    decode_t = specs["vae_decoder"].sample_inputs(sizes, rng)["timestep"]
    assert decode_t.shape == (2,) and (0 <= decode_t).all() and (decode_t <= 0.1).all()
