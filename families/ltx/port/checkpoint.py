"""Read a Hugging Face LTX-Video snapshot into the port, strictly, without pickle.

A snapshot is what `LTXPipeline.save_pretrained` (or LTXImageToVideoPipeline's) writes:
`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `scheduler/`, `tokenizer/`. Weights
are safetensors, their `.fp16` variants or index-listed shards (export/checkpoint.py's readers,
shared with SVD). Every failure is a one-line CheckpointError naming the file (and key).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch
from torch import nn

from svd_trt.export.checkpoint import CheckpointError, Component, load_port, read_folder, read_json
from svd_trt.families.ltx.config import DEFAULT_TOKENIZER_MAX_LENGTH, LTXConfig, LTXConfigError

log = logging.getLogger(__name__)

COMPONENTS = {
    "transformer": Component("transformer", "config.json", "diffusion_pytorch_model"),
    "vae": Component("vae", "config.json", "diffusion_pytorch_model"),
    "text_encoder": Component("text_encoder", "config.json", "model"),
}
PIPELINES = ("LTXPipeline", "LTXImageToVideoPipeline")  # one snapshot layout for both
SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
CLASSES = {"transformer": "LTXVideoTransformer3DModel", "vae": "AutoencoderKLLTXVideo"}
# A tokenizer without a usable model_max_length (transformers' "very large int" for none) falls
# back to diffusers' 128.
MAX_TOKENIZER_LENGTH = 1 << 20


def read_config(snapshot: str | Path) -> LTXConfig:
    """The snapshot's configs; raises CheckpointError if it is not an LTX-Video snapshot."""
    root = Path(snapshot)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    index = read_json(root / "model_index.json")
    missing = [c for c in ("transformer", "vae", "text_encoder", "scheduler") if c not in index]
    if missing or index.get("_class_name", PIPELINES[0]) not in PIPELINES:
        raise CheckpointError(
            f"{root / 'model_index.json'}: not an LTX-Video snapshot (class {index.get('_class_name')!r}"
            + (f"; no {', '.join(missing)})" if missing else ")")
        )
    parts = {name: read_json(root / comp.folder / comp.config_file) for name, comp in COMPONENTS.items()}
    for name, cls in CLASSES.items():
        if parts[name].get("_class_name", cls) != cls:
            raise CheckpointError(
                f"{root / name / 'config.json'}: {parts[name]['_class_name']} is not LTX's {cls}"
            )
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    parts["scheduler"] = read_json(scheduler_path)
    declared = parts["scheduler"].get("_class_name", SCHEDULER_CLASS)
    if declared != SCHEDULER_CLASS:
        raise CheckpointError(
            f"{scheduler_path}: scheduler {declared} is not supported; LTX samples with {SCHEDULER_CLASS}"
        )
    parts["tokenizer_max_length"] = _tokenizer_max_length(root / "tokenizer" / "tokenizer_config.json")
    try:
        cfg = LTXConfig.from_dict(parts)
    except (LTXConfigError, TypeError) as e:
        raise CheckpointError(f"{root}: {e}") from None
    return dataclasses.replace(cfg, **latents_stats(root, cfg))


def latents_stats(root: Path, cfg: LTXConfig, variant: str | None = "auto") -> dict[str, tuple[float, ...]]:
    """The VAE's latents_mean / latents_std buffers (float32 values), read from its weights."""
    comp = COMPONENTS["vae"]
    keys = ("latents_mean", "latents_std")
    state, source = read_folder(root / comp.folder, comp.weights_stem, variant, only=set(keys))
    out = {}
    for key in keys:
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key}")
        values = state[key].float().reshape(-1)
        if values.numel() != cfg.latent_channels:
            raise CheckpointError(f"{source}: {key} has {values.numel()} values, the config {cfg.latent_channels}")
        out[key] = tuple(float(v) for v in values.tolist())
    return out


def _tokenizer_max_length(path: Path) -> int:
    if not path.exists():
        return DEFAULT_TOKENIZER_MAX_LENGTH
    value = read_json(path).get("model_max_length")
    if isinstance(value, int) and 0 < value < MAX_TOKENIZER_LENGTH:
        return value
    return DEFAULT_TOKENIZER_MAX_LENGTH


def build_module(name: str, cfg: LTXConfig) -> nn.Module:
    """An un-loaded port module for one snapshot folder."""
    if name == "transformer":
        from svd_trt.families.ltx.port.transformer import LTXVideoTransformer3D

        return LTXVideoTransformer3D(cfg.transformer)
    if name == "vae":
        from svd_trt.families.ltx.port.vae import LTXVideoVAE

        return LTXVideoVAE(cfg.vae)
    if name == "text_encoder":
        from svd_trt.families.ltx.port.t5 import T5EncoderModel

        return T5EncoderModel(cfg.text_encoder)
    raise ValueError(f"unknown LTX component {name!r}")


def _derived_keys(name: str, state: dict[str, torch.Tensor]) -> dict:
    """T5's tied input embedding, when a snapshot stores it twice: it must equal shared.weight."""
    if name != "text_encoder":
        return {}
    from svd_trt.families.ltx.port.t5 import TIED_KEYS

    shared = state.get("shared.weight")
    return {k: (lambda t: shared is not None and torch.equal(t, shared)) for k in TIED_KEYS}


def load_component(
    snapshot: str | Path,
    name: str,
    cfg: LTXConfig | None = None,
    dtype: torch.dtype = torch.float32,
    variant: str | None = "auto",
) -> nn.Module:
    """The port of folder `name` ('transformer', 'vae', 'text_encoder') with the snapshot's weights,
    every key and shape checked; variant None = fp32 files, 'fp16', or 'auto' (fp32 if present)."""
    root = Path(snapshot)
    cfg = cfg or read_config(root)
    comp = COMPONENTS[name]
    derived = functools.partial(_derived_keys, name)
    return load_port(build_module(name, cfg), root / comp.folder, comp, dtype, variant, derived)
