"""The VAE port against diffusers' AutoencoderKLTemporalDecoder on identical inputs."""

from __future__ import annotations

import collections
import dataclasses
import functools

import pytest
import torch
from conftest import FORBIDDEN_OPS, assert_same_state_dict, perturb_, rel_err
from diffusers import AutoencoderKLTemporalDecoder

from svd_trt.export.checkpoint import MethodModule
from svd_trt.families.svd.config import VAEConfig, preset
from svd_trt.families.svd.port.vae import TemporalVAE

# diffusers' own test config (tests/models/autoencoders/test_models_autoencoder_kl_temporal_decoder.py);
# it leaves layers_per_block at the class default, 1, where the decoder's mid attention never runs.
DIFFUSERS_TEST = VAEConfig(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    latent_channels=4,
    layers_per_block=1,
)
CONFIGS = {
    "diffusers-test": DIFFUSERS_TEST,
    # 2 layers: resnet, attention, resnet in the decoder mid block (the real SVD VAE).
    "layers-2": dataclasses.replace(DIFFUSERS_TEST, layers_per_block=2),
    # 3 layers: diffusers builds a third mid resnet and never runs it.
    "layers-3": dataclasses.replace(DIFFUSERS_TEST, layers_per_block=3),
    "tiny": preset("tiny").vae,
    "small": preset("small").vae,
}
DECODE_SHAPES = [(1, 4, 6), (2, 5, 3), (5, 3, 4)]  # (frames, h, w) of one chunk
ENCODE_SHAPES = [(1, 32, 48), (2, 40, 24), (1, 37, 45)]  # (batch, H, W); 37x45 is not a multiple of 8


def perturb(model: torch.nn.Module) -> None:
    """Every parameter off its init (perturb_), and each mix factor moved by ~1.

    alpha = sigmoid(mix_factor); the decoder's init 0 makes alpha = 1 - alpha, where a
    swapped spatial/temporal blend would be invisible.
    """
    perturb_(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mix_factor"):
                p.add_(torch.randn_like(p))


@functools.cache
def models(name: str) -> tuple[torch.nn.Module, TemporalVAE]:
    """(diffusers reference with perturbed weights, our port holding the same state dict)."""
    torch.manual_seed(0)
    kwargs = {k: v for k, v in CONFIGS[name].to_dict().items() if k != "_class_name"}
    ref = AutoencoderKLTemporalDecoder(**kwargs).eval()
    perturb(ref)
    ours = TemporalVAE(CONFIGS[name]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def image(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g) * 2.0 - 1.0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_are_the_checkpoint_keys(name: str) -> None:
    assert_same_state_dict(*models(name))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_norm_eps_and_groups_match_diffusers(name: str) -> None:
    """1e-6 everywhere except the decoder's temporal resnets (1e-5)."""
    ref, ours = models(name)
    ref_modules = dict(ref.named_modules())
    norms = [(n, m) for n, m in ours.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms
    for n, m in norms:
        assert ref_modules[n].eps == m.eps, f"{n}: eps {m.eps} != diffusers {ref_modules[n].eps}"
        assert ref_modules[n].num_groups == m.num_groups, n


@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoder_matches_diffusers(name: str, shape: tuple[int, int, int]) -> None:
    ref, ours = models(name)
    frames, h, w = shape
    z = randn(frames, CONFIGS[name].latent_channels, h, w)
    s = CONFIGS[name].scale_factor
    with torch.no_grad():
        expected = ref.decode(z, num_frames=frames).sample
        got = ours.decode(z)
    assert got.shape == expected.shape == (frames, 3, h * s, w * s)
    err = rel_err(got, expected)
    print(f"vae decode {name} F,h,w={shape}: rel err {err:.3e}")
    assert err <= 1e-5


@pytest.mark.parametrize("shape", ENCODE_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_matches_diffusers(name: str, shape: tuple[int, int, int]) -> None:
    ref, ours = models(name)
    x = image(*shape)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist.mode()
        got = ours.encode(x)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    print(f"vae encode {name} B,H,W={shape}: rel err {err:.3e}")
    assert err <= 1e-5


def test_decoder_mixes_frames() -> None:
    """Changing frame 0's latent changes frame 2's pixels: the chunk is one video."""
    _, ours = models("layers-2")
    z = randn(3, 4, 4, 6)
    other = z.clone()
    other[0] += 1.0
    with torch.no_grad():
        assert rel_err(ours.decode(other)[2], ours.decode(z)[2]) > 1e-3


def onnx_ops(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_onnx_decoder_runs_any_chunk_length(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, ours = models("small")
    path = tmp_path / "vae_decoder.onnx"
    with torch.no_grad():
        torch.onnx.export(
            MethodModule(ours, "decode"),
            (randn(3, 4, 4, 6),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["latents"],
            output_names=["frames"],
            dynamic_axes={"latents": {0: "F", 2: "h", 3: "w"}, "frames": {0: "F", 2: "H", 3: "W"}},
        )
    ops = onnx_ops(path)
    assert not FORBIDDEN_OPS & set(ops), ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames, h, w in [(1, 3, 5), (5, 5, 4)]:
        z = randn(frames, 4, h, w, seed=frames)
        (got,) = session.run(None, {"latents": z.numpy()})
        with torch.no_grad():
            expected = ours.decode(z)
        err = rel_err(got, expected)
        print(f"vae decoder onnx F={frames} {h}x{w} (traced at F=3 4x6): rel err {err:.3e}")
        assert got.shape == (frames, 3, 8 * h, 8 * w)
        assert err <= 1e-4


def test_onnx_encoder_has_dynamic_batch_and_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, ours = models("small")
    path = tmp_path / "vae_encoder.onnx"
    with torch.no_grad():
        torch.onnx.export(
            MethodModule(ours, "encode"),
            (image(2, 32, 48),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["latent"],
            dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "latent": {0: "B", 2: "h", 3: "w"}},
        )
    ops = onnx_ops(path)
    assert not FORBIDDEN_OPS & set(ops), ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = image(1, 40, 24, seed=7)
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = ours.encode(x)
    err = rel_err(got, expected)
    print(f"vae encoder onnx B=1 40x24 (traced at B=2 32x48): rel err {err:.3e}")
    assert got.shape == (1, 4, 5, 3)
    assert err <= 1e-4
