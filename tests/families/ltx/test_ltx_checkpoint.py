"""The LTX snapshot reader: strict keys and shapes, fp16 / sharded variants, one-line refusals, and
random snapshots that diffusers' LTXPipeline loads."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import LTXPipeline
from ltx_reference import reference_pipeline, save_snapshot
from safetensors.torch import load_file, save_file

from svd_trt.errors import UserError
from svd_trt.export.checkpoint import CheckpointError
from svd_trt.families.ltx.config import preset
from svd_trt.families.ltx.port.checkpoint import COMPONENTS, load_component, read_config
from svd_trt.families.ltx.port.random_checkpoint import write_random_checkpoint


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    cfg = preset("tiny-32x8")
    return cfg, save_snapshot(reference_pipeline(cfg), tmp_path_factory.mktemp("ltx"))


@pytest.fixture()
def copy(snapshot, tmp_path):
    cfg, path = snapshot
    return cfg, shutil.copytree(path, tmp_path / "snap")


def _one_line(error: BaseException) -> None:
    assert isinstance(error, UserError) and "\n" not in str(error)


def without_stats(cfg):
    """The config files' part of a config: the VAE's latents mean / std come from its weights."""
    return dataclasses.replace(cfg, latents_mean=None, latents_std=None)


def test_read_config_is_the_saved_config(snapshot) -> None:
    cfg, path = snapshot
    read = read_config(path)
    assert without_stats(read) == cfg
    vae = load_component(path, "vae")
    assert read.latents_mean == tuple(vae.latents_mean.tolist())
    assert read.latents_std == tuple(vae.latents_std.tolist())


def test_tied_embedding_copy_is_checked(copy) -> None:
    """Older transformers stored T5's input embedding twice; the copy must equal shared.weight."""
    _, path = copy
    file = path / "text_encoder" / "model.safetensors"
    state = load_file(str(file))
    save_file({**state, "encoder.embed_tokens.weight": state["shared.weight"].clone()}, str(file))
    load_component(path, "text_encoder")
    save_file({**state, "encoder.embed_tokens.weight": state["shared.weight"] + 1}, str(file))
    with pytest.raises(CheckpointError, match="encoder.embed_tokens.weight") as info:
        load_component(path, "text_encoder")
    _one_line(info.value)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_missing_unexpected_and_misshapen_keys_are_refused(copy, name: str) -> None:
    _, path = copy
    comp = COMPONENTS[name]
    file = path / comp.folder / f"{comp.weights_stem}.safetensors"
    state = load_file(str(file))
    key = sorted(state)[len(state) // 2]
    for broken, message in (
        ({k: v for k, v in state.items() if k != key}, "missing key"),
        ({**state, "extra.weight": torch.zeros(1)}, "unexpected key"),
        ({**state, key: torch.zeros(*state[key].shape, 2)}, "has shape"),
    ):
        save_file(broken, str(file))
        with pytest.raises(CheckpointError, match=message) as info:
            load_component(path, name)
        _one_line(info.value)


def test_not_an_ltx_snapshot_is_refused(copy) -> None:
    _, path = copy
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableVideoDiffusionPipeline"})
    )
    with pytest.raises(CheckpointError, match="not an LTX-Video snapshot") as info:
        read_config(path)
    _one_line(info.value)


def test_other_scheduler_and_noise_injecting_vae_are_refused(copy) -> None:
    _, path = copy
    sched = path / "scheduler" / "scheduler_config.json"
    original = sched.read_text()
    sched.write_text(json.dumps({**json.loads(original), "_class_name": "FlowMatchHeunDiscreteScheduler"}))
    with pytest.raises(CheckpointError, match="FlowMatchHeunDiscreteScheduler"):
        read_config(path)
    sched.write_text(original)
    vae = path / "vae" / "config.json"
    cfg = json.loads(vae.read_text())
    vae.write_text(json.dumps({**cfg, "decoder_inject_noise": [True] * len(cfg["decoder_layers_per_block"])}))
    with pytest.raises(CheckpointError, match="decoder_inject_noise") as info:
        read_config(path)
    _one_line(info.value)


@pytest.mark.parametrize("variant,shard", [(None, None), ("fp16", 40_000)], ids=["fp32", "fp16-sharded"])
def test_random_snapshot_loads_in_diffusers_and_the_port(tmp_path, variant, shard) -> None:
    cfg = preset("tiny-32x8")
    path = write_random_checkpoint(tmp_path / "random", cfg, variant=variant, max_shard_bytes=shard)
    assert without_stats(read_config(path)) == cfg
    if shard:
        assert len(list(path.glob("*/*.safetensors.index.fp16.json"))) == len(COMPONENTS)
    # no tokenizer folder until the runtime's tokenizer writer exists: diffusers is told so
    tokenizer = {} if (path / "tokenizer").exists() else {"tokenizer": None}
    pipe = LTXPipeline.from_pretrained(str(path), variant=variant, **tokenizer)
    assert (pipe.vae.spatial_compression_ratio, pipe.vae.temporal_compression_ratio) == (32, 8)
    for name in COMPONENTS:
        ours = load_component(path, name, cfg, variant=variant).state_dict()
        ref = getattr(pipe, name).state_dict()
        assert set(ref) - set(ours) <= {"encoder.embed_tokens.weight"}
        for key, value in ours.items():
            assert torch.equal(value, ref[key].to(value.dtype)), f"{name}: {key}"
    assert torch.equal(pipe.text_encoder.encoder.embed_tokens.weight, pipe.text_encoder.shared.weight)
