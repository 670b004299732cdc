"""Write a random-weight SVD snapshot in the Hugging Face layout, without diffusers.

The result loads with `svd_trt.export.checkpoint` and with diffusers'
`StableVideoDiffusionPipeline.from_pretrained`, so real shapes (`full`) can be
exercised for size, memory and speed without downloading weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from svd_trt.export.checkpoint import COMPONENTS, build_module
from svd_trt.families.svd.config import SVDConfig

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


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _component_config(name: str, cfg: SVDConfig) -> dict:
    return {"unet": cfg.unet, "vae": cfg.vae, "image_encoder": cfg.clip}[name].to_dict()


def save_weights(
    state: dict[str, torch.Tensor],
    folder: Path,
    stem: str,
    variant: str | None,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Save as one file, or as shards plus an index the way save_pretrained names them."""
    infix = f".{variant}" if variant else ""
    state = {k: v.contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    if len(shards) == 1:
        path = folder / f"{stem}{infix}.safetensors"
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = folder / f"{stem}{infix}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update({k: path.name for k in shard})
        paths.append(path)
    _write_json(folder / f"{stem}.safetensors.index{infix}.json", {"metadata": {}, "weight_map": weight_map})
    return paths


def write_random_checkpoint(
    out: str | Path,
    cfg: SVDConfig,
    variant: str | None = None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """Random weights (the port's default init) for every component; variant None = fp32, 'fp16'."""
    root = Path(out)
    torch.manual_seed(seed)
    dtype = torch.float16 if variant == "fp16" else torch.float32
    for name, comp in COMPONENTS.items():
        folder = root / comp.folder
        _write_json(folder / comp.config_file, _component_config(name, cfg))
        module = build_module(name, cfg)
        state = {k: v.to(dtype) for k, v in module.state_dict().items()}
        del module
        files = save_weights(state, folder, comp.weights_stem, variant, max_shard_bytes)
        log.info("wrote %s: %d tensors in %d file(s)", name, len(state), len(files))
        del state
    _write_json(root / "scheduler" / "scheduler_config.json", cfg.scheduler.to_dict())
    _write_json(root / "feature_extractor" / "preprocessor_config.json", cfg.feature_extractor.to_dict())
    _write_json(root / "model_index.json", MODEL_INDEX)
    return root
