"""Write a random-weight LTX-Video snapshot in the Hugging Face layout, without diffusers.

The result loads with `families.ltx.port.checkpoint` and with diffusers'
`LTXPipeline.from_pretrained`, so the real shapes (`full`) can be exercised for size, memory
and speed without downloading weights. The tokenizer folder comes from the numpy runtime's
`families.ltx.tokenizer.write_tokenizer_files` when that module exists; without it the
snapshot has no tokenizer (model_index.json says so, and diffusers then loads tokenizer=None).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from svd_trt.export.snapshot_writer import write_json, write_random_components
from svd_trt.families.ltx.config import LTXConfig
from svd_trt.families.ltx.port.checkpoint import COMPONENTS, build_module
from svd_trt.families.ltx.tokenizer import write_tokenizer_files

log = logging.getLogger(__name__)



MODEL_INDEX = {
    "_class_name": "LTXPipeline",
    "_diffusers_version": "0.32.0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLLTXVideo"],
}


def _component_config(name: str, cfg: LTXConfig) -> dict:
    return {"transformer": cfg.transformer, "vae": cfg.vae, "text_encoder": cfg.text_encoder}[name].to_dict()


def write_tokenizer(folder: Path, cfg: LTXConfig) -> None:
    """The runtime's tiny offline T5 tokenizer (ids below 64: inside every preset's vocabulary), its
    model_max_length set to the config's."""
    write_tokenizer_files(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("model_max_length") != cfg.tokenizer_max_length:
        write_json(config_path, {**config, "model_max_length": cfg.tokenizer_max_length})


def write_random_checkpoint(
    out: str | Path,
    cfg: LTXConfig,
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
    write_tokenizer(root / "tokenizer", cfg)
    write_json(root / "model_index.json", MODEL_INDEX)
    return root
