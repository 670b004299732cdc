"""One description per component: I/O names, symbolic shapes, dtypes, sample inputs.

Export (dynamic axes), engine building (optimization profiles), the accuracy check
(sample inputs) and the runtime (I/O dtypes) all read these; no other module spells
a component's shapes. Symbolic dims: B batch, F frames, H/W pixels, h/w latents
(h = H / vae scale factor). numpy only: the runtime imports this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from svd_trt.config import SVDConfig

Dim = str | int


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `fixed_dtype` pins a tensor to a dtype in every precision."""

    name: str
    dims: tuple[Dim, ...]
    dist: str = "normal"  # how sample inputs are drawn: normal, signed_unit, timestep, time_ids
    fixed_dtype: str | None = None

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.dims)

    def dtype(self, precision: str) -> np.dtype:
        if self.fixed_dtype:
            return np.dtype(self.fixed_dtype)
        return np.dtype(np.float16 if precision == "fp16" else np.float32)


@dataclass(frozen=True)
class ComponentSpec:
    """A component as an engine sees it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Precision per target: fp16 where TensorRT has it safe; the VAE stays fp32 (its
    # decoder overflows fp16 with trained weights, which is why diffusers force_upcasts).
    gpu_precision: str = "fp32"

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes: every symbolic dim of every tensor."""
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
            for t in self.inputs + self.outputs
        }

    def input_shapes(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape(sizes) for t in self.inputs}

    def sample_inputs(
        self, sizes: Mapping[str, int], rng: np.random.Generator, precision: str = "fp32"
    ) -> dict[str, np.ndarray]:
        """Inputs in the ranges the pipeline feeds (see `draw`)."""
        return {t.name: draw(t, t.shape(sizes), rng).astype(t.dtype(precision)) for t in self.inputs}


def draw(t: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Realistic values: timesteps 0.25*ln(sigma) over SVD's sigma range, time ids as used."""
    if t.dist == "signed_unit":
        return rng.uniform(-1.0, 1.0, shape)
    if t.dist == "timestep":
        return 0.25 * np.log(rng.uniform(0.002, 700.0, shape))
    if t.dist == "time_ids":
        fps_id = rng.integers(3, 30, shape[:-1] + (1,))
        motion = rng.integers(1, 255, shape[:-1] + (1,))
        aug = rng.uniform(0.0, 0.1, shape[:-1] + (1,))
        return np.concatenate([fps_id, motion, aug], axis=-1)
    return rng.standard_normal(shape)


def component_specs(cfg: SVDConfig) -> dict[str, ComponentSpec]:
    """The four components' specs for one model config."""
    lat = cfg.vae.latent_channels
    clip = cfg.clip
    return {
        "image_encoder": ComponentSpec(
            "image_encoder",
            inputs=(TensorSpec("pixel_values", ("B", 3, clip.image_size, clip.image_size)),),
            outputs=(TensorSpec("image_embeds", ("B", clip.projection_dim)),),
            gpu_precision="fp16",
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder",
            inputs=(TensorSpec("image", ("B", 3, "H", "W"), dist="signed_unit"),),
            outputs=(TensorSpec("latent", ("B", lat, "h", "w")),),
        ),
        "unet": ComponentSpec(
            "unet",
            inputs=(
                TensorSpec("sample", ("B", "F", cfg.unet.in_channels, "h", "w")),
                TensorSpec("timestep", ("B",), dist="timestep", fixed_dtype="float32"),
                TensorSpec("encoder_hidden_states", ("B", 1, clip.projection_dim)),
                TensorSpec("added_time_ids", ("B", cfg.unet.num_time_ids), dist="time_ids"),
            ),
            outputs=(TensorSpec("noise_pred", ("B", "F", cfg.unet.out_channels, "h", "w")),),
            gpu_precision="fp16",
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            inputs=(TensorSpec("latents", ("F", lat, "h", "w")),),
            outputs=(TensorSpec("frames", ("F", 3, "H", "W")),),
        ),
    }


def sizes_for(cfg: SVDConfig, batch: int, frames: int, height: int, width: int) -> dict[str, int]:
    """Concrete values of the symbolic dims for a pixel size."""
    s = cfg.vae.scale_factor
    return {"B": batch, "F": frames, "H": height, "W": width, "h": height // s, "w": width // s}
