"""The CLIP port against transformers' CLIPVisionModelWithProjection on identical inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from conftest import perturb_, rel_err

from svd_trt.families.svd.config import CLIPConfig, preset
from svd_trt.families.svd.port.clip import DERIVED_KEYS, CLIPVisionWithProjection

# diffusers' SVD pipeline test config: patch 1, odd intermediate size, 5 layers.
DIFFUSERS_TEST = CLIPConfig(
    hidden_size=32,
    projection_dim=32,
    num_hidden_layers=5,
    num_attention_heads=4,
    image_size=32,
    intermediate_size=37,
    patch_size=1,
)
VIT_224_14 = CLIPConfig(
    hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2, num_attention_heads=4
)
CONFIGS = {
    "diffusers-test": DIFFUSERS_TEST,
    "224-14": VIT_224_14,
    "224-14-quick-gelu": dataclasses.replace(VIT_224_14, hidden_act="quick_gelu"),
    "tiny": preset("tiny").clip,
    "small": preset("small").clip,
}


def reference(cfg: CLIPConfig, attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    """transformers' model from our config, every parameter perturbed off its init."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("architectures", "model_type")}
    hf_cfg = transformers.CLIPVisionConfig(**fields)
    hf_cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    # Zero biases and unit LayerNorm weights would hide swapped or missing terms.
    perturb_(model, scale=0.02, seed=seed)
    return model


def port_of(ref: torch.nn.Module, cfg: CLIPConfig) -> CLIPVisionWithProjection:
    ours = CLIPVisionWithProjection(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def pixels(cfg: CLIPConfig, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_image_embeds_match_transformers(name: str, batch: int) -> None:
    cfg = CONFIGS[name]
    ref = reference(cfg)
    ours = port_of(ref, cfg)
    x = pixels(cfg, batch)
    with torch.no_grad():
        expected = ref(pixel_values=x).image_embeds
        got = ours(x)
    assert got.shape == (batch, cfg.projection_dim)
    err = rel_err(got, expected)
    print(f"clip {name} batch={batch}: rel err {err:.3e}")
    assert err <= 1e-5


def test_sdpa_reference_agrees_too() -> None:
    """The port matches transformers' SDPA path as well as its eager one."""
    cfg = CONFIGS["224-14"]
    ref = reference(cfg, attn="sdpa")
    ours = port_of(ref, cfg)
    x = pixels(cfg, 2)
    with torch.no_grad():
        assert rel_err(ours(x), ref(pixel_values=x).image_embeds) <= 1e-5


def test_state_dict_keys_are_the_checkpoint_keys() -> None:
    cfg = CONFIGS["tiny"]
    ref_sd = reference(cfg).state_dict()
    ours_sd = CLIPVisionWithProjection(cfg).state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert not DERIVED_KEYS & set(ours_sd)


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPVisionWithProjection(dataclasses.replace(CONFIGS["tiny"], hidden_act="relu"))


def test_onnx_export_with_dynamic_batch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    cfg = CONFIGS["224-14"]
    ours = port_of(reference(cfg), cfg)
    path = tmp_path / "clip.onnx"
    torch.onnx.export(
        ours,
        (pixels(cfg, 1),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
    )
    x = pixels(cfg, 3, seed=7)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.no_grad():
        expected = ours(x)
    err = rel_err(got, expected)
    print(f"clip onnx batch=3: rel err {err:.3e}")
    assert got.shape == (3, cfg.projection_dim)
    assert err <= 1e-4
