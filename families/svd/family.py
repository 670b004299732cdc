"""SVD as the shared layers see it (svd_trt/family.py): one object naming its pieces.

The numpy side is imported here; the port (torch) only inside the methods that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svd_trt.families.svd import euler
from svd_trt.families.svd import memory as svd_memory
from svd_trt.families.svd import spec as svd_spec
from svd_trt.families.svd.config import SVDConfig, preset
from svd_trt.families.svd.options import CHECK_DEFAULTS, LIMIT_NAMES, GenerationOptions, resolve
from svd_trt.family import DrawSpec, InputSpec
from svd_trt.limits import Request
from svd_trt.spec import ComponentSpec, Span

ASSETS = Path(__file__).resolve().parents[2] / "runtime" / "assets"


class SVDFamily:
    name = "svd"
    title = "SVD"
    pipelines = ("StableVideoDiffusionPipeline",)
    options = GenerationOptions
    check_defaults = CHECK_DEFAULTS
    inputs = (InputSpec("image", "image", True, "Conditioning image."),)
    # diffusers' order: the noise-augmentation draw, then the initial latents
    draws = (
        DrawSpec("image_noise", "Noise-augmentation draw [1, 3, H, W] (.npy)."),
        DrawSpec("latents", "Initial noise [1, F, C, h, w] (.npy)."),
    )
    limit_names = LIMIT_NAMES
    quantizable = "unet"  # the component calibration/ quantizes to int8 / fp8
    denoiser = "unet"  # the component run once per step
    presets = ("tiny", "small", "full", "full-14")
    # Bump when the port changes what a graph holds; tests/export/test_export_version.py pins it to
    # the code of port_sources().
    export_version = 1

    # ------------------------------------------------------------------ config and components

    def config_from_dict(self, d: Mapping[str, Any]) -> SVDConfig:
        return SVDConfig.from_dict(d)

    def preset(self, size: str) -> SVDConfig:
        return preset(size)

    def component_specs(self, cfg: SVDConfig) -> dict[str, ComponentSpec]:
        return svd_spec.component_specs(cfg)

    def sizes(self, cfg: SVDConfig, spec: ComponentSpec, values: Mapping[str, int], batch: int) -> dict[str, int]:
        """Symbolic dims of `spec` for request values (its frame axis is the value spec.frames names)."""
        return svd_spec.sizes_for(cfg, batch, values[spec.frames], values["height"], values["width"])

    def served_limits(self, cfg: SVDConfig, request: Request, bounded: bool) -> dict[str, Span]:
        return svd_spec.served_limits(cfg, request, bounded)

    # ------------------------------------------------------------------ requests

    def resolve(self, opts: GenerationOptions, cfg: SVDConfig, limits: Mapping[str, Span] | None = None):
        return resolve(opts, cfg, limits)

    def request_values(self, opts: GenerationOptions) -> dict[str, int]:
        return {name: getattr(opts, name) for name in LIMIT_NAMES}

    def estimate(self, cfg: SVDConfig, opts: GenerationOptions, attention: str, host_activations: bool):
        return svd_memory.estimate(cfg, opts, attention, host_activations)

    def output_fps(self, opts: GenerationOptions) -> float:
        return opts.fps

    def schedule_timesteps(self, cfg: SVDConfig, opts: GenerationOptions):
        """The denoiser's timesteps of a request (svd-export check draws its inputs from them)."""
        return euler.make_schedule(cfg.scheduler, opts.num_inference_steps).timesteps

    def check_inputs(self) -> dict[str, Any]:
        """What `svd-export check --end-to-end` feeds when the user gives nothing."""
        return {"image": ASSETS / "coffee.jpg"}

    def pipeline_class(self):
        from svd_trt.families.svd.pipeline import SVDPipeline

        return SVDPipeline

    # ------------------------------------------------------------------ the port (torch)

    def read_config(self, snapshot: str | Path) -> SVDConfig:
        from svd_trt.families.svd.port.checkpoint import read_config

        cfg = read_config(snapshot)
        euler.check_scheduler(cfg.scheduler)  # a snapshot the runtime cannot sample is refused first
        return cfg

    def weight_files(self, snapshot: str | Path, source: str, variant: str | None) -> list[Path]:
        from svd_trt.export.checkpoint import find_weights
        from svd_trt.families.svd.port.checkpoint import COMPONENTS

        comp = COMPONENTS[source]
        return find_weights(Path(snapshot) / comp.folder, comp.weights_stem, variant)

    def load_component(self, snapshot, source: str, cfg: SVDConfig, dtype, variant: str | None = "auto"):
        from svd_trt.families.svd.port.checkpoint import load_component

        return load_component(snapshot, source, cfg, dtype=dtype, variant=variant)

    def trace_sizes(self, cfg: SVDConfig) -> dict[str, int]:
        """The shape the exporter traces at: B, F > 1 and h != w so no axis is taken for a constant."""
        down = 2 ** (len(cfg.unet.block_out_channels) - 1)
        h, w = 2 * down, 3 * down
        s = cfg.vae.scale_factor
        return {"B": 2, "F": 3, "h": h, "w": w, "H": h * s, "W": w * s}

    def write_assets(self, snapshot: str | Path, out: Path) -> list[str]:
        """Files besides the engines the runtime reads (none for SVD)."""
        return []

    def write_random_checkpoint(self, out, size: str, variant: str | None = None, seed: int = 0, **kw):
        from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

        return write_random_checkpoint(out, preset(size, kw.get("num_frames")), variant, seed)

    def speed_up(self, module) -> int:
        """The torch backend's fast path on a GPU: one QKV GEMM in self-attention (same math)."""
        from svd_trt.families.svd.port.fast_attention import speed_up_attention

        return speed_up_attention(module)

    def port_sources(self) -> tuple[str, ...]:
        """The port's files, relative to the repository root: what its ONNX graphs depend on."""
        return tuple(f"families/svd/port/{m}.py" for m in ("clip", "unet", "vae", "layers", "checkpoint"))


SVD = SVDFamily()
