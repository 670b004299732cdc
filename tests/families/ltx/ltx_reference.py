"""The reference for the LTX port tests: diffusers' and transformers' own classes, built from our
configs' to_dict, every parameter perturbed off its init, saved in the Hugging Face layout."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from conftest import perturb_
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)

from svd_trt.families.ltx.config import LTXConfig, T5EncoderConfig, TransformerConfig, VAEConfig

# diffusers' LTXPipeline.prepare_latents / __call__ defaults for the RoPE scale
FRAME_RATE = 25


def _kwargs(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def reference_transformer(cfg: TransformerConfig, seed: int = 0) -> LTXVideoTransformer3DModel:
    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(**_kwargs(cfg.to_dict())).eval()
    perturb_(model, scale=0.02, seed=seed)
    return model


def reference_vae(cfg: VAEConfig, seed: int = 0) -> AutoencoderKLLTXVideo:
    torch.manual_seed(seed)
    model = AutoencoderKLLTXVideo(**_kwargs(cfg.to_dict())).eval()
    perturb_(model, scale=0.02, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    # the host's normalization constants: loaded strictly as buffers even though no graph uses them
    model.latents_mean.copy_(torch.randn(cfg.latent_channels, generator=g) * 0.1)
    model.latents_std.copy_(torch.rand(cfg.latent_channels, generator=g) + 0.5)
    return model


def reference_t5(cfg: T5EncoderConfig, seed: int = 0, attn: str = "eager") -> transformers.T5EncoderModel:
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("architectures", "model_type")}
    hf = transformers.T5Config(**fields)
    hf._attn_implementation = attn
    torch.manual_seed(seed)
    model = transformers.T5EncoderModel(hf).eval()
    perturb_(model, scale=0.02, seed=seed)
    return model


def reference_pipeline(cfg: LTXConfig, seed: int = 0) -> LTXPipeline:
    """LTXPipeline without a tokenizer (the numpy runtime's helper writes that one)."""
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_kwargs(cfg.scheduler.to_dict())),
        vae=reference_vae(cfg.vae, seed),
        text_encoder=reference_t5(cfg.text_encoder, seed),
        tokenizer=None,
        transformer=reference_transformer(cfg.transformer, seed),
    )


def save_snapshot(pipe: LTXPipeline, path: Path, **kwargs) -> Path:
    pipe.save_pretrained(str(path), safe_serialization=True, **kwargs)
    return path


def rope(
    model: LTXVideoTransformer3DModel, x: torch.Tensor, frames: int, height: int, width: int, cfg: LTXConfig
):
    """cos, sin [B, S, inner_dim] from diffusers' own LTXVideoRotaryPosEmbed, scaled as LTXPipeline does."""
    scale = (cfg.temporal_ratio / FRAME_RATE, cfg.spatial_ratio, cfg.spatial_ratio)
    return model.rope(x, frames, height, width, scale)
