"""SVD's image encoder: a port of transformers' `CLIPVisionModelWithProjection`.

Attribute names are the checkpoint's keys, so a transformers state dict loads with
`load_state_dict(sd, strict=True)` and no renaming. Only the forward pass SVD uses is
kept: fixed image size (no position interpolation), no hidden-state or attention outputs,
and no Python branches on tensor values, so tracing and ONNX export see one graph.
"""

from __future__ import annotations

import torch
from torch import nn

from svd_trt.export.layers import LayerNorm, attention
from svd_trt.families.svd.config import CLIPConfig

# Older transformers saved `position_ids` (an arange over positions) as a persistent
# buffer, so real snapshots may carry it. The port derives positions instead; a loader
# should check such a key equals arange(num_positions) and drop it.
DERIVED_KEYS = {"vision_model.embeddings.position_ids"}


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU original CLIP trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The MLP nonlinearity named by `hidden_act`; SVD's ViT-H/14 uses exact (erf) "gelu"."""
    if name == "gelu":
        return nn.GELU(approximate="none")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unsupported CLIP hidden_act {name!r}: expected 'gelu' or 'quick_gelu'")


class CLIPVisionEmbeddings(nn.Module):
    """Patchify with a stride-P conv, prepend the class token, add learned positions."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        d = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        num_positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(num_positions, d)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + (S/P)^2, D]."""
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        # Embedding(arange(N)) is the whole table in order: add the weight directly, so
        # no position_ids buffer exists and the graph has no gather.
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPAttention(nn.Module):
    """Bidirectional multi-head self-attention, softmax(q k^T / sqrt(d_head)) v."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = d // cfg.num_attention_heads
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The default scale head_dim ** -0.5 is CLIP's.
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.activation_fn = activation(cfg.hidden_act)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """`num_hidden_layers` encoder layers in sequence."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVisionTransformer(nn.Module):
    """transformers' `CLIPVisionModel` body: returns the pooled (class-token) state [B, D]."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: the key's spelling
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return self.post_layernorm(hidden[:, 0])


class CLIPVisionWithProjection(nn.Module):
    """CLIP image tower + linear projection: pixel_values [B, 3, S, S] -> image_embeds [B, E]."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = CLIPVisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values are CLIP-normalised; returns the unnormalised image_embeds."""
        return self.visual_projection(self.vision_model(pixel_values))
