"""The UNet port against diffusers' UNetSpatioTemporalConditionModel on identical inputs."""

from __future__ import annotations

import collections
import dataclasses
import functools

import pytest
import torch
from conftest import FORBIDDEN_OPS, assert_same_state_dict, perturb_, rel_err
from diffusers import UNetSpatioTemporalConditionModel

from svd_trt.families.svd.config import UNetConfig, preset
from svd_trt.families.svd.port.unet import UNetSpatioTemporal

# diffusers' own SVD UNet test config (tests/models/unets/test_models_unet_spatiotemporal.py).
DIFFUSERS_TEST = UNetConfig(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=32,
    num_attention_heads=8,
    projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32,
)
# Per-block tuples everywhere, two transformer layers in the mid block and a
# per-layer depth (1, 2, 1) that the 2-resnet down block and the 3-resnet up block share.
TUPLES = dataclasses.replace(
    preset("tiny").unet,
    layers_per_block=(2, 1),
    transformer_layers_per_block=((1, 2, 1), 2),
    cross_attention_dim=(32, 32),
)
CONFIGS = {
    "diffusers-test": DIFFUSERS_TEST,
    "tiny": preset("tiny").unet,
    "small": preset("small").unet,
    "tuples": TUPLES,
}

# (batch, frames, h, w): non-square; odd sizes take diffusers' forward_upsample_size path.
SHAPES = {
    "diffusers-test": [(1, 1, 8, 12), (2, 3, 6, 10), (1, 5, 5, 7)],
    "tiny": [(2, 1, 6, 10), (1, 3, 8, 4), (2, 5, 7, 9)],
    "small": [(1, 1, 8, 16), (2, 3, 9, 14), (1, 5, 6, 10)],
    "tuples": [(1, 1, 6, 10), (2, 3, 5, 7), (1, 5, 4, 6)],
}


def perturb(model: torch.nn.Module) -> None:
    """Every parameter off its init (perturb_), and each mix factor moved by ~1.

    alpha = sigmoid(mix_factor) sits near 0.5 at init, where a swapped spatial/temporal
    blend would barely show.
    """
    perturb_(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mix_factor"):
                p.add_(torch.randn_like(p))


@functools.cache
def models(name: str) -> tuple[torch.nn.Module, UNetSpatioTemporal]:
    """(diffusers reference with perturbed weights, our port holding the same state dict)."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "_class_name"}
    ref = UNetSpatioTemporalConditionModel(**kwargs).eval()
    perturb(ref)
    ours = UNetSpatioTemporal(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def inputs(
    cfg: UNetConfig, batch: int, frames: int, h: int, w: int, seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """sample, timestep [B] (0.25 ln sigma), image embedding [B, 1, D], time ids (fps-1, motion, aug)."""
    g = torch.Generator().manual_seed(seed)
    cross = (
        cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    )
    sample = torch.randn(batch, frames, cfg.in_channels, h, w, generator=g)
    timestep = torch.rand(batch, generator=g) * 3.0 - 1.0
    context = torch.randn(batch, 1, cross, generator=g)
    ids = torch.stack(
        [torch.tensor([6.0, 127.0, 0.02]) + i * torch.tensor([1.0, 20.0, 0.01]) for i in range(batch)]
    )
    return sample, timestep, context, ids


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_are_the_checkpoint_keys(name: str) -> None:
    assert_same_state_dict(*models(name))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_norm_eps_and_groups_match_diffusers(name: str) -> None:
    """eps differs per block type (1e-5 / 1e-6); 1e-5 rel output tolerance cannot see that."""
    ref, ours = models(name)
    ref_modules = dict(ref.named_modules())
    norms = [
        (n, m) for n, m in ours.named_modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))
    ]
    assert norms
    for n, m in norms:
        r = ref_modules[n]
        # ours subclass torch's norms only to add an export-time fp32 island (same keys, same math)
        assert isinstance(m, type(r)), n
        assert r.eps == m.eps, f"{n}: eps {m.eps} != diffusers {r.eps}"
        assert getattr(r, "num_groups", None) == getattr(m, "num_groups", None), n


@pytest.mark.parametrize(
    ("name", "shape"), [(name, shape) for name, shapes in SHAPES.items() for shape in shapes], ids=str
)
def test_matches_diffusers(name: str, shape: tuple[int, int, int, int]) -> None:
    ref, ours = models(name)
    cfg = CONFIGS[name]
    x = inputs(cfg, *shape)
    with torch.no_grad():
        expected = ref(*x).sample
        got = ours(*x)
    assert got.shape == expected.shape == (shape[0], shape[1], cfg.out_channels, shape[2], shape[3])
    err = rel_err(got, expected)
    print(f"unet {name} B,F,h,w={shape}: rel err {err:.3e}")
    assert err <= 1e-5


def test_tolerance_sees_a_temporal_weight_change() -> None:
    """The 1e-5 bound has teeth: nudging one deep temporal mix factor breaks it."""
    ref, ours = models("small")
    x = inputs(CONFIGS["small"], 1, 3, 8, 8)
    changed = UNetSpatioTemporal(CONFIGS["small"]).eval()
    changed.load_state_dict(ours.state_dict())
    with torch.no_grad():
        changed.mid_block.attentions[0].time_mixer.mix_factor.add_(0.01)
        assert rel_err(changed(*x), ref(*x).sample) > 1e-4


def test_frames_are_not_independent() -> None:
    """Changing frame 0 changes frame 2: the temporal layers really mix frames."""
    _, ours = models("tiny")
    sample, *rest = inputs(CONFIGS["tiny"], 1, 3, 6, 10)
    other = sample.clone()
    other[:, 0] += 1.0
    with torch.no_grad():
        assert rel_err(ours(other, *rest)[:, 2], ours(sample, *rest)[:, 2]) > 1e-3


def test_onnx_export_keeps_batch_frames_and_size_dynamic(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    _, ours = models("small")
    cfg = CONFIGS["small"]
    names = ["sample", "timestep", "encoder_hidden_states", "added_time_ids"]
    dims = {0: "B", 1: "F", 3: "h", 4: "w"}
    path = tmp_path / "unet.onnx"
    with torch.no_grad():
        torch.onnx.export(
            ours,
            inputs(cfg, 2, 3, 8, 12),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["noise_pred"],
            dynamic_axes={"sample": dims, "noise_pred": dims, **{n: {0: "B"} for n in names[1:]}},
        )
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert not FORBIDDEN_OPS & set(ops), ops
    assert ops["InstanceNormalization"] > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = inputs(cfg, 1, 5, 9, 14, seed=7)
    (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, x)})
    with torch.no_grad():
        expected = ours(*x)
    err = rel_err(got, expected)
    print(f"unet onnx B=1 F=5 9x14 (traced at B=2 F=3 8x12): rel err {err:.3e}")
    assert got.shape == (1, 5, cfg.out_channels, 9, 14)
    assert err <= 1e-4
