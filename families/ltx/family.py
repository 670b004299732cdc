"""LTX-Video as the shared layers see it (svd_trt/family.py): one object naming its pieces.

The numpy side is imported here; the port (torch) only inside the methods that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svd_trt.families.ltx import flow_match
from svd_trt.families.ltx import memory as ltx_memory
from svd_trt.families.ltx import spec as ltx_spec
from svd_trt.families.ltx.config import LTXConfig, LTXConfigError, preset
from svd_trt.families.ltx.options import CHECK_DEFAULTS, LIMIT_NAMES, LTXOptions, resolve
from svd_trt.family import DrawSpec, InputSpec
from svd_trt.limits import Request
from svd_trt.spec import ComponentSpec, Span


class LTXFamily:
    name = "ltx"
    title = "LTX-Video"
    pipelines = ("LTXPipeline", "LTXImageToVideoPipeline")
    options = LTXOptions
    check_defaults = CHECK_DEFAULTS
    inputs = (
        InputSpec("prompt", "text", True, "What the video shows."),
        InputSpec("negative_prompt", "text", False, "What it should not show (CFG's negative).", default=""),
        InputSpec("image", "image", False, "First frame: image to video."),
    )
    # diffusers' order, one generator: the image posterior's normal, the initial noise, the decode noise
    draws = (
        DrawSpec("encoder_noise", "Image posterior's standard normal [1, C, 1, H', W'] (.npy; image to video)."),
        DrawSpec("latents", "Initial noise [1, C, F', H', W'] (.npy)."),
        DrawSpec("decode_noise", "Decode noise [1, C, F', H', W'] (.npy; timestep-conditioned VAEs)."),
    )
    limit_names = LIMIT_NAMES
    quantizable = None  # no int8 / fp8 path for LTX yet
    denoiser = "transformer"
    presets = ("tiny", "tiny-32x8", "small", "full")
    # Bump when the port changes what a graph holds; tests/export/test_export_version.py pins it to
    # the code of port_sources().
    export_version = 2

    # ------------------------------------------------------------------ config and components

    def config_from_dict(self, d: Mapping[str, Any]) -> LTXConfig:
        return LTXConfig.from_dict(dict(d))

    def preset(self, size: str) -> LTXConfig:
        return preset(size)

    def component_specs(self, cfg: LTXConfig) -> dict[str, ComponentSpec]:
        return ltx_spec.component_specs(cfg)

    def sizes(self, cfg: LTXConfig, spec: ComponentSpec, values: Mapping[str, int], batch: int) -> dict[str, int]:
        return ltx_spec.sizes_for(
            cfg, batch, values["num_frames"], values["height"], values["width"], values["max_sequence_length"]
        )

    def served_limits(self, cfg: LTXConfig, request: Request, bounded: bool) -> dict[str, Span]:
        return ltx_spec.served_limits(cfg, request, bounded)

    # ------------------------------------------------------------------ requests

    def resolve(self, opts: LTXOptions, cfg: LTXConfig, limits: Mapping[str, Span] | None = None) -> LTXOptions:
        return resolve(opts, cfg, limits)

    def request_values(self, opts: LTXOptions) -> dict[str, int]:
        return {name: getattr(opts, name) for name in LIMIT_NAMES}

    def estimate(self, cfg: LTXConfig, opts: LTXOptions, attention: str, host_activations: bool):
        return ltx_memory.estimate(cfg, opts, attention, host_activations)

    def output_fps(self, opts: LTXOptions) -> float:
        return opts.frame_rate

    def schedule_timesteps(self, cfg: LTXConfig, opts: LTXOptions):
        """The transformer's timesteps of a request (svd-export check draws its inputs from them)."""
        sched = cfg.scheduler
        f, h, w = ltx_spec.latent_grid(cfg, opts.num_frames, opts.height, opts.width)
        return flow_match.make_schedule(sched, opts.num_inference_steps, f * h * w).timesteps

    def check_inputs(self) -> dict[str, Any]:
        """What `svd-export check --end-to-end` feeds when the user gives nothing."""
        return {"prompt": "A red fox trots through fresh snow at dawn, its breath steaming."}

    def pipeline_class(self):
        from svd_trt.families.ltx.pipeline import LTXVideoPipeline

        return LTXVideoPipeline

    # ------------------------------------------------------------------ the port (torch)

    def read_config(self, snapshot: str | Path) -> LTXConfig:
        from svd_trt.families.ltx.port.checkpoint import read_config

        cfg = read_config(snapshot)
        flow_match.check_config(cfg.scheduler)
        return cfg

    def weight_files(self, snapshot: str | Path, source: str, variant: str | None) -> list[Path]:
        from svd_trt.export.checkpoint import find_weights
        from svd_trt.families.ltx.port.checkpoint import COMPONENTS

        comp = COMPONENTS[source]
        return find_weights(Path(snapshot) / comp.folder, comp.weights_stem, variant)

    def load_component(self, snapshot, source: str, cfg: LTXConfig, dtype, variant: str | None = "auto"):
        from svd_trt.families.ltx.port.checkpoint import load_component

        return load_component(snapshot, source, cfg, dtype=dtype, variant=variant)

    def trace_sizes(self, cfg: LTXConfig) -> dict[str, int]:
        return ltx_spec.trace_sizes(cfg)

    def write_assets(self, snapshot: str | Path, out: Path) -> list[str]:
        """The tokenizer the runtime encodes prompts with, as one tokenizer.json (from the
        snapshot's tokenizer.json or spiece.model)."""
        from svd_trt.families.ltx.tokenizer import TOKENIZER_FILE, write_tokenizer_json

        write_tokenizer_json(Path(snapshot) / "tokenizer", Path(out) / TOKENIZER_FILE)
        return [TOKENIZER_FILE]

    def write_random_checkpoint(self, out, size: str, variant: str | None = None, seed: int = 0, **kw):
        from svd_trt.families.ltx.port.random_checkpoint import write_random_checkpoint

        if kw.get("num_frames") is not None:
            raise LTXConfigError("--num-frames: LTX-Video's transformer has no default frame count to set")
        return write_random_checkpoint(out, preset(size), variant, seed)

    def speed_up(self, module) -> int:
        """The torch backend's fast path: nothing beyond the port's own SDPA attention."""
        return 0

    def port_sources(self) -> tuple[str, ...]:
        """The port's files, relative to the repository root: what its ONNX graphs depend on."""
        return tuple(f"families/ltx/port/{m}.py" for m in ("t5", "transformer", "vae", "layers", "checkpoint"))


LTX = LTXFamily()
