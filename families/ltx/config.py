"""LTX-Video's configs as frozen dataclasses; defaults are LTX-Video 2B's values. numpy-free.

`from_dict` reads the `config.json` a diffusers / transformers snapshot ships (unknown keys
ignored); `to_dict` writes one diffusers' and transformers' `from_pretrained` load. Presets:
`tiny` (fast tests: 4x spatial / 4x temporal VAE, diffusers' fast-test shapes), `tiny-32x8` (tiny
channels, the real 32x / 8x ratios, a timestep-conditioned decoder), `small` (the CPU demo and
benchmark), `full` (LTX-Video 2B: 28 blocks of 32 x 64 heads, T5-XXL, the 0.9.5 VAE).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from svd_trt.config_io import fields_from_dict, listify, tuplify
from svd_trt.errors import UserError


class LTXConfigError(UserError, ValueError):
    """A config the port cannot export (noise-injecting decoder, unknown block or activation): one line."""


def _as_dict(cfg: Any) -> dict[str, Any]:
    return {k: listify(v) for k, v in dataclasses.asdict(cfg).items()}


@dataclass(frozen=True)
class TransformerConfig:
    """LTXVideoTransformer3DModel (diffusers' class defaults are LTX-Video 2B's, except
    cross_attention_dim: 2048 in the real config, i.e. inner_dim)."""

    in_channels: int = 128
    out_channels: int = 128
    patch_size: int = 1
    patch_size_t: int = 1
    num_attention_heads: int = 32
    attention_head_dim: int = 64
    cross_attention_dim: int = 2048
    num_layers: int = 28
    activation_fn: str = "gelu-approximate"
    qk_norm: str = "rms_norm_across_heads"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 4096
    attention_bias: bool = True
    attention_out_bias: bool = True

    def __post_init__(self) -> None:
        if self.activation_fn not in ("gelu-approximate", "gelu"):
            raise LTXConfigError(
                f"transformer activation_fn {self.activation_fn!r}: the port has gelu(-approximate)"
            )
        if self.qk_norm != "rms_norm_across_heads":
            raise LTXConfigError(f"transformer qk_norm {self.qk_norm!r}: LTX uses rms_norm_across_heads")
        if self.cross_attention_dim != self.inner_dim:
            # attn2's keys see the caption projection's output, which is inner_dim wide
            raise LTXConfigError(
                f"transformer cross_attention_dim {self.cross_attention_dim} != inner_dim {self.inner_dim}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        d = dict(d)
        if d.get("out_channels") is None and "in_channels" in d:
            d["out_channels"] = d["in_channels"]  # diffusers: out_channels or in_channels
        return fields_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "LTXVideoTransformer3DModel", **_as_dict(self)}

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


ENCODER_BLOCKS = ("LTXVideoDownBlock3D", "LTXVideo095DownBlock3D")
DOWNSAMPLE_TYPES = ("conv", "spatial", "temporal", "spatiotemporal")


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKLLTXVideo; defaults are diffusers' class defaults = LTX-Video 0.9.0's VAE.

    Variants diffusers 0.42 builds from these keys: 0.9.0 (LTXVideoDownBlock3D, strided-conv
    downsampling, plain decoder), 0.9.1 (timestep-conditioned decoder with residual depth-to-space
    upsamplers; its noise-injecting resnets are refused here), 0.9.5+ (LTXVideo095DownBlock3D with
    space-to-depth downsamplers, explicit compression ratios).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 128
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    down_block_types: tuple[str, ...] = ("LTXVideoDownBlock3D",) * 4
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)
    decoder_layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)
    spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)
    decoder_inject_noise: tuple[bool, ...] = (False,) * 5
    downsample_type: tuple[str, ...] = ("conv",) * 4
    upsample_residual: tuple[bool, ...] = (False,) * 4
    upsample_factor: tuple[int, ...] = (1,) * 4
    timestep_conditioning: bool = False
    patch_size: int = 4
    patch_size_t: int = 1
    resnet_norm_eps: float = 1e-6
    scaling_factor: float = 1.0
    encoder_causal: bool = True
    decoder_causal: bool = False
    spatial_compression_ratio: int | None = None
    temporal_compression_ratio: int | None = None

    def __post_init__(self) -> None:
        if any(self.decoder_inject_noise):
            raise LTXConfigError(
                "VAE decoder_inject_noise is on (LTX-Video 0.9.1): its resnets draw torch.randn inside the "
                "decoder, which does not export; use a VAE config with it off (0.9.5 and later)"
            )
        for kind in self.down_block_types:
            if kind not in ENCODER_BLOCKS:
                raise LTXConfigError(f"VAE down block {kind!r}: expected one of {', '.join(ENCODER_BLOCKS)}")
        for kind in self.downsample_type:
            if kind not in DOWNSAMPLE_TYPES:
                raise LTXConfigError(
                    f"VAE downsample_type {kind!r}: expected one of {', '.join(DOWNSAMPLE_TYPES)}"
                )

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "AutoencoderKLLTXVideo", **_as_dict(self)}

    @property
    def spatial_ratio(self) -> int:
        """Pixels per latent along H and W (diffusers' vae.spatial_compression_ratio)."""
        if self.spatial_compression_ratio is not None:
            return self.spatial_compression_ratio
        return self.patch_size * 2 ** sum(self.spatio_temporal_scaling)

    @property
    def temporal_ratio(self) -> int:
        """Frames per latent frame after the first: F = (F' - 1) * ratio + 1."""
        if self.temporal_compression_ratio is not None:
            return self.temporal_compression_ratio
        return self.patch_size_t * 2 ** sum(self.spatio_temporal_scaling)


# transformers' T5Config: "gated-gelu" means the tanh GELU (its "gelu_new"), any other
# "[gated-]act" its plain activation of that name.
T5_ACTIVATIONS = ("gelu_new", "gelu", "relu")


@dataclass(frozen=True)
class T5EncoderConfig:
    """T5EncoderModel (transformers' T5Config); defaults are google/t5-v1_1-xxl's. Keys that do not
    change the encoder's output (tie_word_embeddings, which transformers 5 rewrites) are left to
    transformers' defaults."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_decoder_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "gated-gelu"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self) -> None:
        parts = self.feed_forward_proj.split("-")
        if (
            len(parts) > 2
            or (len(parts) == 2 and parts[0] != "gated")
            or self.dense_act_fn not in T5_ACTIVATIONS
        ):
            raise LTXConfigError(
                f"T5 feed_forward_proj {self.feed_forward_proj!r}: expected [gated-]gelu or relu"
            )

    from_dict = classmethod(fields_from_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"architectures": ["T5EncoderModel"], "model_type": "t5", **_as_dict(self)}

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


# FlowMatchEulerDiscreteScheduler.__init__'s defaults: what diffusers reads for a key a
# scheduler_config.json lacks (tests check them against diffusers' signature).
FLOW_MATCH_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}


@dataclass(frozen=True)
class FlowMatchSchedulerConfig:
    """FlowMatchEulerDiscreteScheduler; defaults are LTX-Video's scheduler_config.json (dynamic
    shifting 0.95..2.05 over 1024..4096 tokens, terminal sigma 0.1) plus diffusers' defaults for the
    keys it lacks. Which values the runtime reproduces is the runtime's call."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = True
    base_shift: float | None = 0.95
    max_shift: float | None = 2.05
    base_image_seq_len: int = 1024
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = 0.1
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowMatchSchedulerConfig:
        """As diffusers' from_config reads it: a missing key is FLOW_MATCH_DEFAULTS' value, an explicit
        null stays null, unknown keys are ignored."""
        return cls(**{k: tuplify(d.get(k, default)) for k, default in FLOW_MATCH_DEFAULTS.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", **_as_dict(self)}


DEFAULT_TOKENIZER_MAX_LENGTH = 128  # LTX-Video's tokenizer_config.json model_max_length


@dataclass(frozen=True)
class LTXConfig:
    """The components, scheduler and tokenizer length of one LTX-Video snapshot."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vae: VAEConfig = field(default_factory=lambda: VAE_095)
    text_encoder: T5EncoderConfig = field(default_factory=T5EncoderConfig)
    scheduler: FlowMatchSchedulerConfig = field(default_factory=FlowMatchSchedulerConfig)
    tokenizer_max_length: int = DEFAULT_TOKENIZER_MAX_LENGTH
    # The VAE's latents_mean / latents_std buffers: weights in its safetensors file, not config keys.
    # The export side reads them (port/checkpoint.read_config); the runtime normalizes with them.
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        tc, vae = self.transformer, self.vae
        packed = vae.latent_channels * tc.patch_size**2 * tc.patch_size_t
        if tc.in_channels != packed:
            raise LTXConfigError(
                f"transformer in_channels {tc.in_channels} != VAE latent_channels {vae.latent_channels} "
                f"x patch {tc.patch_size}^2 x {tc.patch_size_t}"
            )
        if tc.caption_channels != self.text_encoder.d_model:
            raise LTXConfigError(
                f"transformer caption_channels {tc.caption_channels} != T5 d_model {self.text_encoder.d_model}"
            )

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LTXConfig:
        """From one dict per part (a snapshot's config files, or a manifest's `model`)."""
        return LTXConfig(
            transformer=TransformerConfig.from_dict(d["transformer"]),
            vae=VAEConfig.from_dict(d["vae"]),
            text_encoder=T5EncoderConfig.from_dict(d["text_encoder"]),
            scheduler=FlowMatchSchedulerConfig.from_dict(d["scheduler"]),
            tokenizer_max_length=int(d.get("tokenizer_max_length", DEFAULT_TOKENIZER_MAX_LENGTH)),
            latents_mean=tuplify(d.get("latents_mean")),
            latents_std=tuplify(d.get("latents_std")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "transformer": self.transformer.to_dict(),
            "vae": self.vae.to_dict(),
            "text_encoder": self.text_encoder.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "tokenizer_max_length": self.tokenizer_max_length,
            "latents_mean": listify(self.latents_mean),
            "latents_std": listify(self.latents_std),
        }

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def spatial_ratio(self) -> int:
        return self.vae.spatial_ratio

    @property
    def temporal_ratio(self) -> int:
        return self.vae.temporal_ratio


# LTX-Video 0.9.5's VAE (diffusers' conversion script): space-to-depth encoder blocks, a
# timestep-conditioned decoder with residual depth-to-space upsampling, 32x / 8x.
VAE_095 = VAEConfig(
    block_out_channels=(128, 256, 512, 1024, 2048),
    down_block_types=("LTXVideo095DownBlock3D",) * 4,
    decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 6, 6, 2, 2),
    decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True, True, True, True),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    timestep_conditioning=True,
    spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)


def _tiny_t5(d_model: int) -> T5EncoderConfig:
    # 8 buckets over distance 16: prompts of ~20 tokens reach the logarithmic buckets
    return T5EncoderConfig(
        vocab_size=256,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )


def _tiny_transformer(latent: int, caption: int, layers: int = 1, heads: int = 4, head_dim: int = 8):
    inner = heads * head_dim
    return TransformerConfig(
        in_channels=latent,
        out_channels=latent,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=inner,
        num_layers=layers,
        caption_channels=caption,
    )


def preset(name: str) -> LTXConfig:
    """A named size: `tiny`, `tiny-32x8`, `small` or `full` (LTX-Video 2B with the 0.9.5 VAE)."""
    if name == "tiny":
        # diffusers' LTX fast-test shapes, with channel changes so every resnet shortcut is built
        vae = VAEConfig(
            latent_channels=8,
            block_out_channels=(8, 16, 16, 16),
            decoder_block_out_channels=(8, 16, 16, 16),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            patch_size=1,
        )
        return LTXConfig(_tiny_transformer(8, 32), vae, _tiny_t5(32))
    if name == "tiny-32x8":
        vae = dataclasses.replace(
            VAE_095,
            latent_channels=8,
            block_out_channels=(8, 16, 16, 32, 32),
            decoder_block_out_channels=(16, 32, 64),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
        )
        return LTXConfig(_tiny_transformer(8, 32), vae, _tiny_t5(32))
    if name == "small":
        vae = dataclasses.replace(
            VAE_095,
            latent_channels=32,
            block_out_channels=(16, 32, 32, 64, 64),
            # each level twice the one above, as the 0.9.5 VAE's (256, 512, 1024): with its 2x
            # depth-to-space upsamplers every up block keeps its width, which the timestep-conditioned
            # decoder needs (diffusers embeds t at a block's input width: (32, 64, 64) fails there)
            decoder_block_out_channels=(32, 64, 128),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
        )
        t5 = dataclasses.replace(_tiny_t5(64), d_kv=16, d_ff=128, num_layers=2)
        return LTXConfig(_tiny_transformer(32, 64, layers=2, heads=4, head_dim=16), vae, t5)
    if name == "full":
        return LTXConfig()
    raise ValueError(f"unknown LTX model size {name!r}: choose tiny, tiny-32x8, small or full")
