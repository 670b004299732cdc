"""Model configs as frozen dataclasses; defaults are the real SVD / SVD-XT values.

`from_dict` reads a diffusers / transformers `config.json`; `to_dict` writes one that
diffusers and transformers load too. Presets: `tiny` (fast tests), `small` (4 blocks,
8x VAE, a 224/14 CLIP: the CPU demo and benchmark), `full` (the real shapes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from svd_trt.config_io import fields_from_dict, listify, tuplify


@dataclass(frozen=True)
class UNetConfig:
    """UNetSpatioTemporalConditionModel."""

    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    num_frames: int = 25
    sample_size: int | None = 96

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: listify(v) for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": "UNetSpatioTemporalConditionModel", **d}

    @property
    def num_time_ids(self) -> int:
        """added_time_ids per sample: fps-1, motion bucket, noise-aug strength."""
        return self.projection_class_embeddings_input_dim // self.addition_time_embed_dim


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKLTemporalDecoder (its class defaults are NOT the real ones)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    sample_size: int = 768
    scaling_factor: float = 0.18215
    force_upcast: bool = True

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: listify(v) for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": "AutoencoderKLTemporalDecoder", **d}

    @property
    def scale_factor(self) -> int:
        """Pixels per latent along H and W."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class CLIPConfig:
    """CLIPVisionModelWithProjection (ViT-H/14 for SVD)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    projection_dim: int = 1024
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model", **d}


# EulerDiscreteScheduler.__init__'s defaults: what diffusers reads for a key a scheduler_config.json
# lacks (tests check them against diffusers' signature). Not SVD's values: SVD's file sets most keys.
EULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
    "timestep_spacing": "linspace",
    "timestep_type": "discrete",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
}


@dataclass(frozen=True)
class SchedulerConfig:
    """EulerDiscreteScheduler; defaults are SVD's scheduler_config.json (plus diffusers' defaults for
    the keys it lacks: final_sigmas_type, rescale_betas_zero_snr, the other sigma schedules).

    Which values the runtime reproduces is svd_trt.families.svd.euler.check_scheduler's call.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "v_prediction"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = True
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: float | None = 0.002
    sigma_max: float | None = 700.0
    timestep_spacing: str = "leading"
    timestep_type: str = "continuous"
    steps_offset: int = 1
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SchedulerConfig:
        """As diffusers' from_config reads it: a missing key is EULER_DEFAULTS' value, an explicit null
        stays null (sigma_min/max: the training sigmas' range), unknown keys are ignored."""
        return cls(**{k: tuplify(d.get(k, default)) for k, default in EULER_DEFAULTS.items()})

    def to_dict(self) -> dict[str, Any]:
        d = {k: listify(v) for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": "EulerDiscreteScheduler", **d}


@dataclass(frozen=True)
class FeatureExtractorConfig:
    """CLIPImageProcessor's normalisation constants (the only part the pipeline uses)."""

    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": 224, "width": 224},
            "size": {"shortest_edge": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "do_convert_rgb": True,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }


@dataclass(frozen=True)
class SVDConfig:
    """The four components and the scheduler of one SVD snapshot."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)

    @staticmethod
    def from_dict(d: dict[str, dict[str, Any]]) -> SVDConfig:
        """From one dict per part (a snapshot's config files, or a manifest's `model`)."""
        return SVDConfig(
            unet=UNetConfig.from_dict(d["unet"]),
            vae=VAEConfig.from_dict(d["vae"]),
            clip=CLIPConfig.from_dict(d["clip"]),
            scheduler=SchedulerConfig.from_dict(d["scheduler"]),
            feature_extractor=FeatureExtractorConfig.from_dict(d.get("feature_extractor", {})),
        )


def preset(name: str, num_frames: int | None = None) -> SVDConfig:
    """A named size: `tiny`, `small`, `full` (SVD-XT shapes) or `full-14` (SVD shapes)."""
    if name == "tiny":
        cfg = SVDConfig(
            unet=UNetConfig(
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                block_out_channels=(32, 64),
                addition_time_embed_dim=32,
                projection_class_embeddings_input_dim=96,
                layers_per_block=2,
                cross_attention_dim=32,
                num_attention_heads=(2, 4),
                num_frames=4,
                sample_size=32,
            ),
            vae=VAEConfig(
                down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1
            ),
            clip=CLIPConfig(
                hidden_size=32,
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
        )
    elif name == "small":
        cfg = SVDConfig(
            unet=UNetConfig(
                block_out_channels=(32, 64, 64, 64),
                addition_time_embed_dim=32,
                projection_class_embeddings_input_dim=96,
                layers_per_block=1,
                cross_attention_dim=64,
                num_attention_heads=(2, 4, 4, 4),
                num_frames=8,
                sample_size=32,
            ),
            vae=VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1),
            clip=CLIPConfig(
                hidden_size=64,
                intermediate_size=128,
                projection_dim=64,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
        )
    elif name == "full":
        cfg = SVDConfig()
    elif name == "full-14":
        cfg = SVDConfig(unet=UNetConfig(num_frames=14))
    else:
        raise ValueError(f"unknown model size {name!r}: choose tiny, small, full or full-14")
    if num_frames is not None:
        cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, num_frames=num_frames))
    return cfg
