"""Strict loading of diffusers-layout snapshots, and the random checkpoint writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import rel_err
from safetensors.torch import load_file, save_file

from svd_trt.export.checkpoint import CheckpointError
from svd_trt.families.svd.config import preset
from svd_trt.families.svd.port.checkpoint import load_component, read_config
from svd_trt.families.svd.port.random_checkpoint import write_random_checkpoint

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _unet_inputs(cfg, frames=3, batch=1):
    g = torch.Generator().manual_seed(0)
    h = w = 2 ** len(cfg.unet.block_out_channels)
    return (
        torch.randn(batch, frames, cfg.unet.in_channels, h, w, generator=g),
        torch.full((batch,), 0.25 * float(torch.log(torch.tensor(30.0)))),
        torch.randn(batch, 1, cfg.clip.projection_dim, generator=g),
        torch.tensor([[6.0, 127.0, 0.02]] * batch),
    )


def test_loads_every_component_strictly_and_equals_diffusers(tiny_snapshot, tiny_pipe):
    cfg = read_config(tiny_snapshot)
    assert cfg.unet == preset("tiny").unet
    unet = load_component(tiny_snapshot, "unet", cfg)
    x, t, ehs, ids = _unet_inputs(cfg)
    with torch.no_grad():
        ours = unet(x, t, ehs, ids)
        ref = tiny_pipe.unet(x, t, ehs, ids).sample
    assert rel_err(ours, ref) <= 1e-5
    vae = load_component(tiny_snapshot, "vae", cfg)
    clip = load_component(tiny_snapshot, "image_encoder", cfg)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(clip(pixels), tiny_pipe.image_encoder(pixels).image_embeds) <= 1e-5
        img = torch.rand(1, 3, 32, 48) * 2 - 1
        assert rel_err(vae.encode(img), tiny_pipe.vae.encode(img).latent_dist.mode()) <= 1e-5


def test_fp16_variant_and_shards(tiny_pipe, tmp_path):
    import copy

    pipe16 = copy.deepcopy(tiny_pipe).to(torch.float16)
    snap = tmp_path / "fp16"
    pipe16.save_pretrained(str(snap), variant="fp16", max_shard_size="20KB")
    assert list((snap / "unet").glob("*.safetensors.index.fp16.json")), "expected a sharded fp16 UNet"
    unet = load_component(snap, "unet", variant="auto")
    ref = pipe16.unet.state_dict()
    for k, v in unet.state_dict().items():
        assert torch.equal(v, ref[k].float()), k
    with pytest.raises(CheckpointError, match="variant fp32"):
        load_component(snap, "unet", variant=None)


def test_random_checkpoint_loads_in_diffusers_and_port(tmp_path):
    from diffusers import StableVideoDiffusionPipeline

    snap = write_random_checkpoint(tmp_path / "rand", preset("tiny"), max_shard_bytes=50_000)
    cfg = read_config(snap)
    assert cfg == preset("tiny")
    unet = load_component(snap, "unet", cfg)
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(snap))
    x, t, ehs, ids = _unet_inputs(cfg)
    with torch.no_grad():
        assert rel_err(unet(x, t, ehs, ids), pipe.unet(x, t, ehs, ids).sample) <= 1e-5


def _edit_unet(snap: Path, edit) -> None:
    path = snap / UNET_FILE
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("conv_in.weight"),
            r"unet/diffusion_pytorch_model\.safetensors: missing key conv_in\.weight",
        ),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected key extra"),
        (lambda s: s.update({"conv_in.bias": torch.zeros(3)}), r"key conv_in\.bias has shape \(3,\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_keys_are_one_line_errors(tiny_snapshot, tmp_path, edit, message):
    snap = _copy(tiny_snapshot, tmp_path / "bad")
    _edit_unet(snap, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_component(snap, "unet")
    assert "\n" not in str(err.value)


def test_truncated_file(tiny_snapshot, tmp_path):
    snap = _copy(tiny_snapshot, tmp_path / "trunc")
    path = snap / UNET_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_component(snap, "unet")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_garbage_header(tiny_snapshot, tmp_path):
    snap = _copy(tiny_snapshot, tmp_path / "garbage")
    (snap / UNET_FILE).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_component(snap, "unet")


def test_pickle_only_is_refused(tiny_snapshot, tmp_path):
    snap = _copy(tiny_snapshot, tmp_path / "bin")
    (snap / UNET_FILE).rename(snap / "unet/diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_component(snap, "unet")


def test_not_an_svd_snapshot(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": []})
    )
    with pytest.raises(CheckpointError, match="not an SVD snapshot"):
        read_config(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        read_config(tmp_path / "nowhere")


def test_missing_shard(tiny_pipe, tmp_path):
    snap = tmp_path / "shards"
    tiny_pipe.save_pretrained(str(snap), max_shard_size="20KB")
    shard = sorted((snap / "unet").glob("*-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        load_component(snap, "unet")


@pytest.mark.slow
def test_full_size_fp16_checkpoint_loads_strictly(tmp_path):
    """The real SVD-XT shapes: write random fp16 weights, load strictly, count parameters."""
    from svd_trt.export.checkpoint import parameter_count

    snap = write_random_checkpoint(tmp_path / "full", preset("full"), variant="fp16")
    counts = {}
    for name in ("unet", "vae", "image_encoder"):
        module = load_component(snap, name, dtype=torch.float16)
        counts[name] = parameter_count(module)
        del module
    print("parameters:", {k: f"{v / 1e6:.1f} M" for k, v in counts.items()})
    assert round(counts["unet"] / 1e9, 3) == 1.525
    assert round(counts["vae"] / 1e6, 1) == 97.7
    assert 630e6 < counts["image_encoder"] < 635e6  # ViT-H/14 vision tower + projection


POSITION_IDS = "vision_model.embeddings.position_ids"  # older transformers saved it (persistent buffer)
CLIP_FILE = "image_encoder/model.safetensors"


def _with_position_ids(snapshot: Path, dst: Path, position_ids: torch.Tensor) -> Path:
    snap = _copy(snapshot, dst)
    state = load_file(str(snap / CLIP_FILE))
    assert POSITION_IDS not in state  # today's transformers does not save it
    save_file({**state, POSITION_IDS: position_ids}, str(snap / CLIP_FILE))
    return snap


def _num_positions(cfg) -> int:
    return (cfg.clip.image_size // cfg.clip.patch_size) ** 2 + 1


def test_old_snapshot_with_arange_position_ids_loads(tiny_snapshot, tiny_pipe, tmp_path):
    """An old transformers snapshot's position_ids ([1, N] int64 arange) is checked and dropped."""
    cfg = read_config(tiny_snapshot)
    ids = torch.arange(_num_positions(cfg)).unsqueeze(0)
    clip = load_component(_with_position_ids(tiny_snapshot, tmp_path / "old", ids), "image_encoder")
    assert POSITION_IDS not in clip.state_dict()
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(clip(pixels), tiny_pipe.image_encoder(pixels).image_embeds) <= 1e-5


def _shuffled(n: int) -> torch.Tensor:
    ids = torch.arange(n)
    ids[[1, 2]] = ids[[2, 1]]
    return ids


@pytest.mark.parametrize(
    "make_ids",
    [
        lambda n: _shuffled(n).unsqueeze(0),
        lambda n: (torch.arange(n) + 1).unsqueeze(0),
        lambda n: torch.zeros(1, n, dtype=torch.long),
        lambda n: torch.arange(n - 1).unsqueeze(0),  # an arange, of another model's length
        lambda n: (torch.arange(n) + 0.25).unsqueeze(0),  # truncates to an arange
    ],
    ids=["swapped", "shifted", "zeros", "short", "fractional"],
)
def test_position_ids_that_are_not_the_arange_are_refused(tiny_snapshot, tmp_path, make_ids):
    ids = make_ids(_num_positions(read_config(tiny_snapshot)))
    snap = _with_position_ids(tiny_snapshot, tmp_path / "bad", ids)
    with pytest.raises(CheckpointError, match=POSITION_IDS.replace(".", r"\.")) as err:
        load_component(snap, "image_encoder")
    assert CLIP_FILE in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("where", ["model_index", "scheduler_config"])
def test_another_scheduler_is_refused_in_one_line(tiny_snapshot, tmp_path, where):
    snap = tmp_path / "snap"
    shutil.copytree(tiny_snapshot, snap)
    if where == "model_index":
        path = snap / "model_index.json"
        data = json.loads(path.read_text())
        data["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]
    else:
        path = snap / "scheduler" / "scheduler_config.json"
        data = {**json.loads(path.read_text()), "_class_name": "EulerAncestralDiscreteScheduler"}
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="EulerAncestralDiscreteScheduler is not supported") as e:
        read_config(snap)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
