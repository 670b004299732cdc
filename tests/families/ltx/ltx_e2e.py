"""Shared by the LTX end-to-end tests: our writer's random snapshots, diffusers' frames, our frames
with diffusers' draws replayed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from diffusers import LTXImageToVideoPipeline, LTXPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.options import LTXOptions
from svd_trt.families.ltx.port.random_checkpoint import write_random_checkpoint
from svd_trt.runtime.engine_pipeline import open_pipeline


def write_snapshot(out: Path, size: str, scheduler: dict | None = None) -> Path:
    """Our writer's random snapshot, latents mean / std made non-trivial (the writer's are 0 and 1)."""
    cfg = preset(size)
    if scheduler:
        cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, **scheduler))
    write_random_checkpoint(out, cfg)
    path = out / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    c = cfg.latent_channels
    state["latents_mean"] = torch.linspace(-0.5, 0.5, c)
    state["latents_std"] = torch.linspace(0.5, 2.0, c)
    save_file(state, path, metadata={"format": "pt"})
    return out


def image_of(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def diffusers_frames(snapshot: Path, inputs: dict, call: dict, seed: int = 0) -> np.ndarray:
    """diffusers' frames [F, H, W, 3] (output_type='np') for our inputs and options."""
    cls = LTXImageToVideoPipeline if inputs.get("image") is not None else LTXPipeline
    pipe = cls.from_pretrained(snapshot)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**inputs, **call, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]


def replayed_draws(pipe, opts: LTXOptions, with_image: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """diffusers' draws from torch.Generator().manual_seed(seed), in its order and shapes."""
    g = torch.Generator().manual_seed(seed)
    shapes = pipe.draw_shapes(pipe.resolve(opts), with_image)
    return {name: torch.randn(shape, generator=g).numpy() for name, shape in shapes.items()}


def our_frames(engines: Path, inputs: dict, call: dict, draws_seed: int = 0, **override) -> np.ndarray:
    """Our frames through `engines` (ONNX Runtime, one thread) with diffusers' draws; `override`
    replaces a draw by name."""
    opts = LTXOptions(**call)
    with open_pipeline(engines, threads=1) as pipe:
        draws = replayed_draws(pipe, opts, inputs.get("image") is not None, draws_seed)
        draws.update(override)
        return pipe.generate(inputs, opts, draws).frames
