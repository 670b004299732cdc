"""Write a random-weight SVD snapshot in the Hugging Face layout, without diffusers.

The result loads with `svd_trt.export.checkpoint` and with diffusers'
`StableVideoDiffusionPipeline.from_pretrained`, so real shapes (`full`) can be
exercised for size, memory and speed without downloading weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from svd_trt.export.snapshot_writer import write_json, write_random_components
from svd_trt.families.svd.config import SVDConfig
from svd_trt.families.svd.port.checkpoint import COMPONENTS, build_module

log = logging.getLogger(__name__)

MODEL_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline",
    "_diffusers_version": "0.24.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}


def _component_config(name: str, cfg: SVDConfig) -> dict:
    return {"unet": cfg.unet, "vae": cfg.vae, "image_encoder": cfg.clip}[name].to_dict()


def write_random_checkpoint(
    out: str | Path,
    cfg: SVDConfig,
    variant: str | None = None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """Random weights (the port's default init) for every component; variant None = fp32, 'fp16'."""
    root = Path(out)
    write_random_components(
        root,
        COMPONENTS,
        lambda name: build_module(name, cfg),
        lambda name: _component_config(name, cfg),
        variant,
        seed,
        max_shard_bytes,
    )
    write_json(root / "scheduler" / "scheduler_config.json", cfg.scheduler.to_dict())
    write_json(root / "feature_extractor" / "preprocessor_config.json", cfg.feature_extractor.to_dict())
    write_json(root / "model_index.json", MODEL_INDEX)
    return root
