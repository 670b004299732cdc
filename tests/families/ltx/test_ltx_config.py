"""LTX configs round-trip through diffusers' and transformers' own config classes; defaults are theirs."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import transformers
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

from svd_trt.errors import UserError
from svd_trt.families.ltx.config import (
    FLOW_MATCH_DEFAULTS,
    VAE_095,
    FlowMatchSchedulerConfig,
    LTXConfig,
    LTXConfigError,
    T5EncoderConfig,
    TransformerConfig,
    VAEConfig,
    preset,
)

PRESETS = ("tiny", "tiny-32x8", "small")


def _kwargs(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", PRESETS)
def test_diffusers_models_built_from_to_dict_read_back_equal(name: str) -> None:
    cfg = preset(name)
    transformer = LTXVideoTransformer3DModel(**_kwargs(cfg.transformer.to_dict()))
    assert TransformerConfig.from_dict(dict(transformer.config)) == cfg.transformer
    vae = AutoencoderKLLTXVideo(**_kwargs(cfg.vae.to_dict()))
    assert VAEConfig.from_dict(dict(vae.config)) == cfg.vae
    # the derived ratios are diffusers' own
    assert (cfg.spatial_ratio, cfg.temporal_ratio) == (
        vae.spatial_compression_ratio,
        vae.temporal_compression_ratio,
    )


def test_ratios_of_the_presets() -> None:
    assert (preset("tiny").spatial_ratio, preset("tiny").temporal_ratio) == (4, 4)
    for name in ("tiny-32x8", "small", "full"):
        cfg = preset(name)
        assert (cfg.spatial_ratio, cfg.temporal_ratio) == (32, 8), name
    assert preset("tiny-32x8").vae.timestep_conditioning
    full = preset("full")
    assert (
        full.transformer.num_layers,
        full.transformer.num_attention_heads,
        full.transformer.inner_dim,
    ) == (28, 32, 2048)
    assert (full.text_encoder.num_layers, full.text_encoder.d_model, full.text_encoder.d_ff) == (
        24,
        4096,
        10240,
    )
    # the 0.9.0 VAE (diffusers' class defaults) derives the same ratios from its scaling flags
    assert (VAEConfig().spatial_ratio, VAEConfig().temporal_ratio) == (32, 8)


def test_t5_config_round_trips_through_transformers() -> None:
    for cfg in (preset("tiny").text_encoder, T5EncoderConfig()):
        fields = {k: v for k, v in cfg.to_dict().items() if k not in ("architectures", "model_type")}
        hf = transformers.T5Config(**fields)
        assert T5EncoderConfig.from_dict(hf.to_dict()) == cfg
        assert (cfg.is_gated_act, cfg.dense_act_fn) == (hf.is_gated_act, hf.dense_act_fn)
    relu = T5EncoderConfig(feed_forward_proj="relu")
    hf = transformers.T5Config(feed_forward_proj="relu")
    assert (relu.is_gated_act, relu.dense_act_fn) == (hf.is_gated_act, hf.dense_act_fn)


def test_scheduler_defaults_are_diffusers_signature() -> None:
    params = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    assert FLOW_MATCH_DEFAULTS == {k: p.default for k, p in params.items() if k != "self"}
    # a file missing every key reads as diffusers' defaults, not as LTX's dataclass defaults
    assert FlowMatchSchedulerConfig.from_dict({}) == FlowMatchSchedulerConfig(**FLOW_MATCH_DEFAULTS)
    ltx = FlowMatchSchedulerConfig()
    sched = FlowMatchEulerDiscreteScheduler(**_kwargs(ltx.to_dict()))
    assert FlowMatchSchedulerConfig.from_dict(dict(sched.config)) == ltx
    # an explicit null stays null (shift_terminal off)
    assert FlowMatchSchedulerConfig.from_dict({"shift_terminal": None}).shift_terminal is None


def test_ltx_config_round_trips() -> None:
    for name in (*PRESETS, "full"):
        cfg = preset(name)
        assert LTXConfig.from_dict(cfg.to_dict()) == cfg


def test_noise_injecting_decoder_is_refused_in_one_line() -> None:
    # LTX-Video 0.9.1's VAE as diffusers' conversion script writes it
    v091 = {
        "block_out_channels": [128, 256, 512, 512],
        "decoder_block_out_channels": [256, 512, 1024],
        "decoder_layers_per_block": [5, 6, 7, 8],
        "decoder_spatio_temporal_scaling": [True, True, True],
        "decoder_inject_noise": [True, True, True, False],
        "upsample_residual": [True, True, True],
        "upsample_factor": [2, 2, 2],
        "timestep_conditioning": True,
    }
    with pytest.raises(LTXConfigError, match="decoder_inject_noise") as info:
        VAEConfig.from_dict(v091)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    # the same decoder with injection off is the 0.9.1 layout the port exports
    off = VAEConfig.from_dict({**v091, "decoder_inject_noise": [False] * 4})
    assert off.timestep_conditioning and off.upsample_factor == (2, 2, 2)


@pytest.mark.parametrize(
    "change",
    [
        {"down_block_types": ("LTX2VideoDownBlock3D",) * 4},
        {"downsample_type": ("pixel",) * 4},
    ],
)
def test_unknown_vae_blocks_are_refused(change: dict) -> None:
    with pytest.raises(LTXConfigError):
        dataclasses.replace(VAE_095, **change)


def test_mismatched_parts_are_refused() -> None:
    tiny = preset("tiny")
    with pytest.raises(LTXConfigError, match="in_channels"):
        dataclasses.replace(tiny, vae=dataclasses.replace(tiny.vae, latent_channels=16))
    with pytest.raises(LTXConfigError, match="caption_channels"):
        dataclasses.replace(tiny, text_encoder=dataclasses.replace(tiny.text_encoder, d_model=64))
    with pytest.raises(LTXConfigError, match="activation_fn"):
        TransformerConfig(activation_fn="swiglu")
