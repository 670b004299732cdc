"""ONNX export: every component runs in ONNX Runtime at shapes other than the traced ones and
equals the torch port; the directory is self-contained, cached and written atomically."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from conftest import FORBIDDEN_OPS, rel_err

from svd_trt.export import onnx_export
from svd_trt.export.checkpoint import component_module
from svd_trt.export.onnx_export import build_onnx_dir
from svd_trt.families.svd.family import SVD
from svd_trt.families.svd.port.checkpoint import load_component, read_config
from svd_trt.families.svd.spec import component_specs
from svd_trt.family import FamilyError
from svd_trt.manifest import load_manifest
from svd_trt.runtime.runners import OrtRunner

# fp32 graph vs fp32 eager: only op ordering and ORT's fusions differ, ~1e-6 relative.
ONNX_TOL = 1e-4


@pytest.fixture(scope="module")
def small_onnx(small_engines):
    out, manifest, statuses = small_engines
    assert statuses == ["exported"] * 4
    return out, manifest


def _port(snapshot, name, cfg):
    spec = component_specs(cfg)[name]
    return component_module(load_component(snapshot, spec.source, cfg), spec)


@pytest.mark.parametrize(
    "sizes",
    [
        {"B": 1, "F": 5, "H": 256, "W": 320},  # batch 1, more frames, other size
        {"B": 2, "F": 1, "H": 192, "W": 128},  # one frame (a tail chunk), portrait
    ],
    ids=["b1f5", "b2f1-portrait"],
)
def test_components_match_port_at_other_shapes(small_snapshot, small_onnx, sizes):
    out, manifest = small_onnx
    cfg = manifest.model
    s = cfg.vae.scale_factor
    sizes = {**sizes, "h": sizes["H"] // s, "w": sizes["W"] // s}
    assert sizes != SVD.trace_sizes(cfg)
    for name, spec in component_specs(cfg).items():
        inputs = spec.sample_inputs(sizes, np.random.default_rng(1))
        ours = OrtRunner(out / spec.onnx_file).run(inputs)[spec.output_names[0]]
        with torch.no_grad():
            ref = _port(small_snapshot, name, cfg)(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        assert ours.shape == ref.shape == spec.outputs[0].shape(sizes)
        err = rel_err(ours, ref)
        assert err <= ONNX_TOL, f"{name}: rel err {err:.2e}"


def test_graphs_are_clean_for_tensorrt(small_snapshot, tmp_path):
    """The TensorRT flavour: standard ops only, attention as MatMul/Softmax for TensorRT to fuse."""
    out = tmp_path / "trt-onnx"
    fp32 = dict.fromkeys(component_specs(read_config(small_snapshot)), "fp32")  # fast on the CPU
    manifest = build_onnx_dir(small_snapshot, out, "tensorrt", fp32)
    for entry in manifest.components.values():
        model = onnx.load(str(out / entry.file))
        ops = Counter(n.op_type for n in model.graph.node)
        assert model.opset_import[0].version >= 17
        assert {n.domain for n in model.graph.node} <= {""}, f"{entry.file} has non-standard ops"
        assert not FORBIDDEN_OPS & set(ops), f"{entry.file} has {FORBIDDEN_OPS & set(ops)}"
    unet_ops = Counter(n.op_type for n in onnx.load(str(out / "unet.onnx")).graph.node)
    assert unet_ops["InstanceNormalization"] > 0 and unet_ops["Softmax"] > 0


def test_onnxruntime_graphs_use_fused_attention(small_onnx):
    """ONNX Runtime's flavour: every self-attention is one MultiHeadAttention node, no Softmax;
    cross-attention to the single image token has no attention at all (softmax of one key = 1)."""
    out, manifest = small_onnx
    unet = onnx.load(str(out / "unet.onnx")).graph
    ops = Counter(n.op_type for n in unet.node)
    # One per self-attention (spatial and temporal attn1 of every block), nothing else.
    blocks = sorted(n.name.split("/attn1/")[0] for n in unet.node if n.op_type == "MultiHeadAttention")
    self_attentions = sorted({n.name.split("/attn1/")[0] for n in unet.node if "/attn1/" in n.name})
    assert ops["Softmax"] == 0 and blocks == self_attentions and len(blocks) >= 4
    assert not any("/attn2/to_q" in n.name or "/attn2/to_k" in n.name for n in unet.node)


def test_manifest_is_self_contained(small_onnx):
    out, manifest = small_onnx
    again = load_manifest(out)
    assert again.model == manifest.model
    assert again.model.vae.scaling_factor == 0.18215
    assert again.components["unet"].inputs["timestep"]["dtype"] == "float32"
    assert set(again.components) == {"image_encoder", "vae_encoder", "unet", "vae_decoder"}


def test_rerun_reuses_and_precision_change_reexports(small_snapshot, small_onnx, tmp_path):
    out, _ = small_onnx
    copy = tmp_path / "engines"
    import shutil

    shutil.copytree(out, copy)
    statuses = {}
    build_onnx_dir(small_snapshot, copy, on_component=lambda n, s, t: statuses.update({n: s}))
    assert set(statuses.values()) == {"reused"}
    build_onnx_dir(
        small_snapshot,
        copy,
        precisions={"image_encoder": "fp16"},
        on_component=lambda n, s, t: statuses.update({n: s}),
    )
    assert statuses["image_encoder"] == "exported" and statuses["unet"] == "reused"
    m = load_manifest(copy)
    assert m.components["image_encoder"].inputs["pixel_values"]["dtype"] == "float16"


def test_interrupted_export_leaves_no_complete_looking_dir(small_snapshot, tmp_path, monkeypatch):
    real = onnx_export.export_onnx

    def fail_on_unet(module, spec, *args, **kwargs):
        if spec.name == "unet":
            raise KeyboardInterrupt
        return real(module, spec, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", fail_on_unet)
    out = tmp_path / "engines"
    with pytest.raises(KeyboardInterrupt):
        build_onnx_dir(small_snapshot, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_snapshot_of_no_known_family_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(FamilyError, match="pipeline 'StableDiffusionPipeline' is none this svd-trt exports"):
        build_onnx_dir(tmp_path, tmp_path / "out")
