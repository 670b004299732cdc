"""Writing a snapshot in the Hugging Face layout: config files and safetensors weights, as save_pretrained names them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


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
    write_json(folder / f"{stem}.safetensors.index{infix}.json", {"metadata": {}, "weight_map": weight_map})
    return paths


def write_random_components(
    root: Path,
    components: dict,
    build: Callable[[str], torch.nn.Module],
    config_of: Callable[[str], dict],
    variant: str | None = None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> None:
    """Each component's config file and random weights (the port's default init, seeded), one at a
    time so only one module is alive: `components` name -> checkpoint Component; variant None = fp32."""
    torch.manual_seed(seed)
    dtype = torch.float16 if variant == "fp16" else torch.float32
    for name, comp in components.items():
        folder = Path(root) / comp.folder
        write_json(folder / comp.config_file, config_of(name))
        module = build(name)
        state = {k: v.to(dtype) for k, v in module.state_dict().items()}
        del module
        files = save_weights(state, folder, comp.weights_stem, variant, max_shard_bytes)
        log.info("wrote %s: %d tensors in %d file(s)", name, len(state), len(files))
        del state
