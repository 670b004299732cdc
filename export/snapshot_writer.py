"""Writing a snapshot in the Hugging Face layout: config files and safetensors weights, as save_pretrained names them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


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
