"""Read a Hugging Face diffusers snapshot's weights into a port, strictly, without pickle.

Each family says where its components live (families/<name>/port/checkpoint.py); this module
reads a component folder's weights and loads them into a port module by key. Weights are `*.safetensors`, their `.fp16` variants, or shards listed in a
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


VARIANTS = (None, "fp16")
def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


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


def read_safetensors(files: list[Path], only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the given files (or `only` those keys, the rest never read); a corrupt or
    truncated file is a CheckpointError."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if only is not None and key not in only:
                        continue
                    if key in state:
                        raise CheckpointError(f"{path}: key {key} also stored in another shard")
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({first_line(e)})") from None
    return state


def read_folder(
    folder: Path, stem: str, variant: str | None = "auto", only: set[str] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """One component folder's tensors (see find_weights for `variant`; `only` these keys) and a name
    for messages."""
    files = find_weights(folder, stem, variant)
    source = str(files[0]) if len(files) == 1 else f"{folder}/{stem} shards"
    return read_safetensors(files, only), source


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


def load_port(
    module: nn.Module,
    folder: Path,
    component: Component,
    dtype: torch.dtype = torch.float32,
    variant: str | None = "auto",
    derived: Callable[[dict[str, torch.Tensor]], dict[str, Callable[[torch.Tensor], bool]]] | None = None,
) -> nn.Module:
    """`module` (a family's un-loaded port module) filled strictly with the weights of `folder`;
    `derived(state)` names the keys a checkpoint may store that the port computes (load_strict)."""
    state, source = read_folder(folder, component.weights_stem, variant)
    # load_state_dict copies with a dtype cast, so fp16 files fill an fp32 module directly.
    load_strict(module, state, source, derived(state) if derived else None)
    log.info("loaded %s from %s (%d tensors)", component.folder, source, len(state))
    return module.to(dtype).eval()


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


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
