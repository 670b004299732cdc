"""Read a Hugging Face diffusers SVD snapshot into the port, strictly, without pickle.

A snapshot is the directory `StableVideoDiffusionPipeline.save_pretrained` writes:
`model_index.json`, `unet/`, `vae/`, `image_encoder/`, `scheduler/`, `feature_extractor/`.
Reading weights (variants, shards, strict keys) is export/checkpoint.py's; this module says
where SVD's components live and which port module each becomes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from svd_trt.export.checkpoint import CheckpointError, Component, load_port, read_json
from svd_trt.families.svd.config import SVDConfig

log = logging.getLogger(__name__)

COMPONENTS = {
    "unet": Component("unet", "config.json", "diffusion_pytorch_model"),
    "vae": Component("vae", "config.json", "diffusion_pytorch_model"),
    "image_encoder": Component("image_encoder", "config.json", "model"),
}

SCHEDULER_CLASS = "EulerDiscreteScheduler"  # SVD's, and the only one families/svd/euler.py reproduces


def read_config(snapshot: str | Path) -> SVDConfig:
    """The snapshot's configs; raises CheckpointError if it is not an SVD snapshot."""
    root = Path(snapshot)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    index = read_json(root / "model_index.json")
    missing = [c for c in ("unet", "vae", "image_encoder", "scheduler") if c not in index]
    if missing:
        raise CheckpointError(
            f"{root / 'model_index.json'}: not an SVD snapshot (no {', '.join(missing)}; "
            f"class {index.get('_class_name')!r})"
        )
    _check_scheduler_class(root, index)
    unet = read_json(root / "unet" / "config.json")
    if unet.get("_class_name", "UNetSpatioTemporalConditionModel") != "UNetSpatioTemporalConditionModel":
        raise CheckpointError(f"{root / 'unet' / 'config.json'}: {unet['_class_name']} is not SVD's UNet")
    fe_path = root / "feature_extractor" / "preprocessor_config.json"
    fe = read_json(fe_path) if fe_path.exists() else {}
    return SVDConfig.from_dict(
        {
            "unet": unet,
            "vae": read_json(root / "vae" / "config.json"),
            "clip": read_json(root / "image_encoder" / "config.json"),
            "scheduler": read_json(root / "scheduler" / "scheduler_config.json"),
            "feature_extractor": fe,
        }
    )


def _check_scheduler_class(root: Path, index: dict[str, Any]) -> None:
    """The runtime samples as diffusers' EulerDiscreteScheduler: another scheduler is refused, not
    silently replaced (its config keys could even parse as Euler's)."""
    named = index.get("scheduler")
    path = root / "scheduler" / "scheduler_config.json"
    declared = read_json(path).get("_class_name", SCHEDULER_CLASS)
    for where, name in ((root / "model_index.json", named[-1] if isinstance(named, list) else named), (path, declared)):
        if name is not None and name != SCHEDULER_CLASS:
            raise CheckpointError(f"{where}: scheduler {name} is not supported; svd-trt samples with {SCHEDULER_CLASS}")


def _is_arange(t: torch.Tensor, n: int) -> bool:
    """t holds 0, 1, ..., n-1 exactly (any shape with n elements, any dtype)."""
    flat = t.reshape(-1)
    return flat.numel() == n and bool(torch.equal(flat, torch.arange(n, dtype=flat.dtype)))


def build_module(name: str, cfg: SVDConfig) -> nn.Module:
    """An un-loaded port module for one component."""
    if name == "unet":
        from svd_trt.families.svd.port.unet import UNetSpatioTemporal

        return UNetSpatioTemporal(cfg.unet)
    if name == "vae":
        from svd_trt.families.svd.port.vae import TemporalVAE

        return TemporalVAE(cfg.vae)
    if name == "image_encoder":
        from svd_trt.families.svd.port.clip import CLIPVisionWithProjection

        return CLIPVisionWithProjection(cfg.clip)
    raise ValueError(f"unknown component {name!r}")


def derived_keys(name: str, cfg: SVDConfig) -> dict[str, Callable[[torch.Tensor], bool]]:
    if name == "image_encoder":
        from svd_trt.families.svd.port.clip import DERIVED_KEYS

        num_positions = (cfg.clip.image_size // cfg.clip.patch_size) ** 2 + 1
        return {k: lambda t: _is_arange(t, num_positions) for k in DERIVED_KEYS}
    return {}


def load_component(
    snapshot: str | Path,
    name: str,
    cfg: SVDConfig | None = None,
    dtype: torch.dtype = torch.float32,
    variant: str | None = "auto",
) -> nn.Module:
    """The port of component `name` ('unet', 'vae', 'image_encoder') with the snapshot's weights."""
    root = Path(snapshot)
    cfg = cfg or read_config(root)
    comp = COMPONENTS[name]
    derived = derived_keys(name, cfg)
    return load_port(build_module(name, cfg), root / comp.folder, comp, dtype, variant, lambda state: derived)


