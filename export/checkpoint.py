"""Read a Hugging Face diffusers SVD snapshot into the port, strictly, without pickle.

A snapshot is the directory `StableVideoDiffusionPipeline.save_pretrained` writes:
`model_index.json`, `unet/`, `vae/`, `image_encoder/`, `scheduler/`, `feature_extractor/`.
Weights are `*.safetensors`, their `.fp16` variants, or shards listed in a
`*.safetensors.index[.fp16].json`. Every failure is a `CheckpointError` whose message
is one line naming the file (and key) at fault.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from svd_trt.errors import UserError, first_line
from svd_trt.families.svd.config import SVDConfig
from svd_trt.spec import ComponentSpec

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A snapshot that cannot be read as its family's: the message is one line naming file and key."""


@dataclass(frozen=True)
class Component:
    """Where one model of the snapshot lives and how its weights are named."""

    folder: str
    config_file: str
    weights_stem: str


COMPONENTS = {
    "unet": Component("unet", "config.json", "diffusion_pytorch_model"),
    "vae": Component("vae", "config.json", "diffusion_pytorch_model"),
    "image_encoder": Component("image_encoder", "config.json", "model"),
}

VARIANTS = (None, "fp16")
SCHEDULER_CLASS = "EulerDiscreteScheduler"  # SVD's, and the only one families/svd/euler.py reproduces


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


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


def weight_files(folder: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors file(s) of one variant, or [] if that variant is absent."""
    infix = f".{variant}" if variant else ""
    single = folder / f"{stem}{infix}.safetensors"
    if single.exists():
        return [single]
    for index in (
        folder / f"{stem}.safetensors.index{infix}.json",
        folder / f"{stem}{infix}.safetensors.index.json",
    ):
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.exists():
                    raise CheckpointError(f"{shard}: missing shard listed in {index.name}")
            return shards
    return []


def find_weights(folder: Path, stem: str, variant: str | None = "auto") -> list[Path]:
    """Weights of `variant` (None = fp32 files, 'fp16', or 'auto' = fp32 if present else fp16)."""
    order = VARIANTS if variant == "auto" else (variant,)
    for v in order:
        files = weight_files(folder, stem, v)
        if files:
            return files
    if list(folder.glob("*.bin")) or list(folder.glob("*.ckpt")):
        raise CheckpointError(
            f"{folder}: only pickle weights (.bin/.ckpt) found; svd-trt reads safetensors only"
        )
    wanted = "any variant" if variant == "auto" else f"variant {variant or 'fp32'}"
    raise CheckpointError(f"{folder}: no {stem}*.safetensors weights ({wanted})")


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the given files; a corrupt or truncated file is a CheckpointError."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key in state:
                        raise CheckpointError(f"{path}: key {key} also stored in another shard")
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({first_line(e)})") from None
    return state


def read_folder(folder: Path, stem: str, variant: str | None = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """One component folder's tensors (see find_weights for `variant`) and a name for messages."""
    files = find_weights(folder, stem, variant)
    source = str(files[0]) if len(files) == 1 else f"{folder}/{stem} shards"
    return read_safetensors(files), source


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    derived: dict[str, Callable[[torch.Tensor], bool]] | None = None,
) -> None:
    """Load `state` into `module`: every key used, none missing, every shape equal.

    `derived` names keys some checkpoints store that the port computes instead (for
    example CLIP's position_ids); each is checked with its predicate and dropped.
    """
    state = dict(state)
    for key, is_valid in (derived or {}).items():
        if key in state:
            if not is_valid(state[key]):
                raise CheckpointError(f"{source}: key {key} does not hold the values the model derives")
            del state[key]
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]}{more}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: key {key} has shape {tuple(state[key].shape)}, the config expects {tuple(ref.shape)}"
            )
    module.load_state_dict(state, strict=True)


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


class MethodModule(nn.Module):
    """One method of a module as its forward: the VAE's encode and decode are two components."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(*args)


def component_module(source: nn.Module, spec: ComponentSpec) -> nn.Module:
    """The module a component runs, from the port module of its snapshot folder (spec.source)."""
    return source if spec.method is None else MethodModule(source, spec.method)


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
    state, source = read_folder(root / comp.folder, comp.weights_stem, variant)
    module = build_module(name, cfg)
    # load_state_dict copies with a dtype cast, so fp16 files fill an fp32 module directly.
    load_strict(module, state, source, derived_keys(name, cfg))
    log.info("loaded %s from %s (%d tensors)", name, source, len(state))
    return module.to(dtype).eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
