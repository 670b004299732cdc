"""`svd-export check`: engines against the torch port through Polygraphy's comparator. It passes
on correct ONNX Runtime engines, fails on exactly the component whose weight was corrupted, holds
fp16 engines to the fp16 rows only, and reports the end-to-end pipeline's PSNR."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from svd_trt.engines.accuracy import CheckOptions, check_component, resolve_options
from svd_trt.engines.check_cli import check
from svd_trt.export.onnx_export import build_onnx_dir
from svd_trt.export.torch_backend import torch_runners
from svd_trt.families.svd.options import GenerationOptions
from svd_trt.families.svd.spec import component_specs
from svd_trt.manifest import load_manifest
from svd_trt.spec import E2E_MIN_PSNR, Tolerance

COMPONENTS = ["image_encoder", "vae_encoder", "unet", "vae_decoder"]
# Inside the UNet, behind a GroupNorm-free residual path: scaled by 1.5 it moves noise_pred by
# ~1e-1 on the small model, far above fp32's atol and far below "obviously broken".
CORRUPTED = "mid_block.resnets.0.spatial_res_block.conv2.weight"


def invoke(*args: str):
    result = CliRunner().invoke(check, list(args), catch_exceptions=False)
    print(result.output)
    return result


def load_json(directory) -> dict:
    return json.loads((directory / "report.json").read_text())


def outputs(report: dict) -> dict[str, dict]:
    """component -> its (single) output's record, with the component's fields merged in."""
    return {c["name"]: {**c, **c["outputs"][0]} for c in report["components"]}


def test_check_passes_on_correct_onnx_engines(small_snapshot, small_engines, tmp_path):
    engines, manifest, _ = small_engines
    cfg = manifest.model
    out = tmp_path / "report"
    result = invoke(
        *("--engines", str(engines), "--model", str(small_snapshot), "--report", str(out)),
        *("--num-frames", "3", "--height", "128", "--width", "192", "--device", "cpu"),
    )
    assert result.exit_code == 0
    report = load_json(out)
    assert report["passed"] is True and report["backend"] == "onnxruntime"
    assert {"svd-trt", "torch", "onnxruntime", "polygraphy", "tensorrt"} <= set(report["versions"])
    assert [c["name"] for c in report["components"]] == COMPONENTS
    specs = component_specs(cfg)
    expected_shapes = {
        "image_encoder": [1, cfg.clip.projection_dim],
        "vae_encoder": [1, 4, 16, 24],
        "unet": [2, 3, specs["unet"].outputs[0].dims[2], 16, 24],  # batch 2: CFG
        "vae_decoder": [3, 3, 128, 192],
    }
    for name, o in outputs(report).items():
        print(
            f"{name}: max abs {o['max_abs']:.2e}, mean abs {o['mean_abs']:.2e}, scale-rel {o['max_abs_over_ref_max']:.2e}"
        )
        assert o["passed"] is True and o["shape"] == o["ref_shape"] == expected_shapes[name]
        tol = specs[name].tolerance_at("fp32")
        assert (o["atol"], o["rtol"], o["precision"]) == (tol.atol, tol.rtol, "fp32")
        for key in ("max_abs", "mean_abs", "max_rel", "mean_rel", "max_abs_over_ref_max"):
            assert math.isfinite(o[key]) and o[key] >= 0
        assert 0 < o["max_abs"] < tol.atol / 10  # fp32 vs fp32: op order only
        assert o["ref_max_abs"] > 0.1, "a near-zero reference would make the check vacuous"
    assert report["components"][2]["input_shapes"]["timestep"] == [2]
    md = (out / "report.md").read_text()
    assert md.startswith("# svd-export check: PASSED")
    assert md.count("| PASS |") == 4 and "FAIL" not in md
    assert "unet (fp32): PASS" in result.output and "accuracy passed" in result.output


def test_check_fails_on_a_corrupted_unet_weight_only(small_snapshot, small_engines, tmp_path):
    engines, _, _ = small_engines
    bad = tmp_path / "engines"
    shutil.copytree(engines, bad)
    model = onnx.load(str(bad / "unet.onnx"))
    (init,) = [i for i in model.graph.initializer if i.name == CORRUPTED]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(model, str(bad / "unet.onnx"))  # the manifest and its cache key are unchanged
    out = tmp_path / "report"
    result = invoke(
        *("--engines", str(bad), "--model", str(small_snapshot), "--report", str(out)),
        *("--num-frames", "2", "--height", "64", "--width", "128", "--device", "cpu"),
    )
    assert result.exit_code == 1
    assert "accuracy FAILED (unet)" in result.output
    report = load_json(out)
    assert report["passed"] is False
    by_name = outputs(report)
    for name, o in by_name.items():
        print(f"{name}: {'PASS' if o['passed'] else 'FAIL'} max abs {o['max_abs']:.2e} (atol {o['atol']:g})")
        assert math.isfinite(o["max_abs"]) and math.isfinite(o["mean_abs"])
    unet = by_name.pop("unet")
    assert unet["passed"] is False and not report["components"][2]["passed"]
    assert unet["max_abs"] > 10 * unet["atol"] and unet["max_abs_over_ref_max"] > 1e-2
    for o in by_name.values():
        assert o["passed"] is True and o["max_abs"] < o["atol"] / 10
    md = (out / "report.md").read_text()
    assert md.startswith("# svd-export check: FAILED")
    (unet_row,) = [line for line in md.splitlines() if line.startswith("| unet |")]
    assert unet_row.endswith("| FAIL |") and md.count("| PASS |") == 3


def test_end_to_end_reports_psnr_and_max_error(tiny_snapshot, tiny_engines, tmp_path):
    result = invoke(
        *("--engines", str(tiny_engines), "--model", str(tiny_snapshot), "--report", str(tmp_path)),
        *("--num-frames", "3", "--height", "32", "--width", "48", "--device", "cpu"),
        *("--end-to-end", "--steps", "2"),
    )
    assert result.exit_code == 0 and "end to end: PASS (PSNR" in result.output
    report = load_json(tmp_path)
    e = report["end_to_end"]
    print(f"end to end: max abs {e['max_abs']:.2e}, mean abs {e['mean_abs']:.2e}, PSNR {e['psnr_db']:.1f} dB")
    assert report["passed"] is True and e["passed"] is True and e["identical"] is False
    assert e["shape"] == [3, 32, 48, 3] and e["steps"] == 2 and e["image"].endswith("coffee.jpg")
    # fp32 engines vs the fp32 port: ~1e-6 per call, a few steps cannot make that visible.
    assert 0 < e["max_abs"] < 1e-3 and 80 < e["psnr_db"] < 300
    assert e["min_psnr_db"] == E2E_MIN_PSNR["fp32"]
    md = (tmp_path / "report.md").read_text()
    assert "## End to end" in md and f"PSNR: {e['psnr_db']:.2f} dB" in md and "max abs frame error" in md


def test_fp16_engine_is_held_to_the_fp16_row(tiny_snapshot, tiny_engines, tmp_path):
    """ONNX Runtime on CPU runs an fp16 graph: inputs reach it as fp16 (cast by Polygraphy)."""
    engines = tmp_path / "engines"
    shutil.copytree(tiny_engines, engines)
    build_onnx_dir(tiny_snapshot, engines, precisions={"image_encoder": "fp16"})
    manifest = load_manifest(engines)
    gen = GenerationOptions(num_frames=2, height=32, width=48, seed=0)
    opts = resolve_options(CheckOptions(engines, tiny_snapshot, gen), manifest)
    spec, entry = component_specs(manifest.model)["image_encoder"], manifest.components["image_encoder"]
    result = check_component(spec, entry, opts, manifest, "onnxruntime")
    (o,) = result.outputs
    print(f"fp16 image_encoder: max abs {o.max_abs:.2e} (atol {result.atol:g})")
    assert (
        result.passed
        and result.precision == "fp16"
        and result.atol == spec.tolerance_at("fp16").atol
    )
    assert result.input_dtypes == {"pixel_values": "float16"} and o.dtype == "float16"
    assert o.max_abs > 1e-5, "fp16 rounding should show"
    # Polygraphy's default tolerances (1e-5) fail the same, correct, fp16 engine.
    strict = dataclasses.replace(spec, tolerance={"fp16": Tolerance(atol=1e-5, rtol=1e-5)})
    assert not check_component(strict, entry, opts, manifest, "onnxruntime").passed


def test_usage_errors_exit_2(small_snapshot, tiny_snapshot, tiny_engines, tmp_path):
    base = ("--model", str(tiny_snapshot), "--report", str(tmp_path / "r"))
    missing = invoke("--engines", str(tmp_path / "nope"), *base)
    assert missing.exit_code == 2 and "engine directory not found" in missing.output
    odd = invoke("--engines", str(tiny_engines), *base, "--height", "33", "--width", "48")
    assert odd.exit_code == 2 and "multiples of" in odd.output
    other = invoke("--engines", str(tiny_engines), "--model", str(small_snapshot))
    assert other.exit_code == 2 and "not the model" in other.output
    assert not (tmp_path / "r").exists()


def test_an_engine_failing_at_run_time_is_one_line(tiny_snapshot, failing_engines, tmp_path):
    """The real ONNX Runtime exception raised inside Polygraphy's comparator: one line, exit 2."""
    from conftest import FAILING_COMPONENT, FAILING_HEIGHT

    result = invoke(
        *("--engines", str(failing_engines), "--model", str(tiny_snapshot), "--report", str(tmp_path / "r")),
        *("--num-frames", "2", "--height", str(FAILING_HEIGHT), "--width", "48", "--device", "cpu"),
    )
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # after the components that passed
    assert last.startswith(
        f"Error: the engines cannot run this request: onnxruntime:{FAILING_COMPONENT}: [ONNXRuntimeError] : 2 : "
        "INVALID_ARGUMENT : Non-zero status code returned while running Gather node"
    ), result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_torch_runners_share_the_vae_and_keep_time_inputs_fp32(tiny_snapshot):
    runners = torch_runners(tiny_snapshot, dtype=torch.float16)
    assert list(runners) == COMPONENTS
    assert runners["vae_encoder"].module.module is runners["vae_decoder"].module.module
    unet = runners["unet"]
    assert unet.fixed == {"timestep": torch.float32, "added_time_ids": torch.float32}
    assert unet._tensor("timestep", np.ones(2, np.float32)).dtype == torch.float32
    assert unet._tensor("sample", np.ones(2, np.float32)).dtype == torch.float16


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_check_tensorrt_engines(tiny_snapshot, tmp_path):
    """The same check through TensorRT engines (fp16 CLIP and UNet, fp32 VAE)."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"tensorrt is not importable here ({type(e).__name__}: {e}); the TensorRT check needs it")
    from svd_trt.engines.build import BuildOptions
    from svd_trt.engines.tensorrt_build import build_tensorrt_dir
    from svd_trt.runtime.trt_runner import TrtError, current_platform

    try:
        current_platform()
    except TrtError as e:
        pytest.skip(f"no usable TensorRT + CUDA GPU: {e}")
    request = dict(num_frames=(3, 3), height=(32, 32), width=(48, 48))
    engines = tmp_path / "trt"
    build_tensorrt_dir(tiny_snapshot, engines, BuildOptions("tensorrt", request, timing_cache=tmp_path / "cache"))
    out = tmp_path / "report"
    result = invoke(
        *("--engines", str(engines), "--model", str(tiny_snapshot), "--report", str(out), "--end-to-end"),
        *("--backend", "tensorrt", "--num-frames", "3", "--height", "32", "--width", "48", "--steps", "2"),
    )
    report = load_json(out)
    assert result.exit_code == 0 and report["passed"] and report["versions"]["tensorrt"]
    assert {c["name"]: c["precision"] for c in report["components"]}["unet"] == "fp16"


@pytest.mark.parametrize("name", ["svd", "epsilon_karras_discrete", "diffusers_defaults"])
def test_unet_is_checked_at_its_own_schedules_timesteps(name):
    """A discrete-timestep snapshot's UNet is fed its 0..999 timesteps, not SVD's 0.25 ln(sigma) range."""
    from scheduler_configs import scheduler_config

    from svd_trt.engines.accuracy import component_feed
    from svd_trt.families.svd.config import preset
    from svd_trt.families.svd.euler import make_schedule
    from svd_trt.manifest import Manifest

    cfg = dataclasses.replace(preset("tiny"), scheduler=scheduler_config(name))
    gen = GenerationOptions(num_frames=2, height=32, width=48, num_inference_steps=25, seed=0)
    manifest = Manifest("onnxruntime", "svd", cfg, {})
    schedule = make_schedule(cfg.scheduler, 25).timesteps
    spec = component_specs(cfg)["unet"]
    feeds = [component_feed(spec, manifest, dataclasses.replace(gen, seed=s)) for s in range(8)]
    drawn = np.concatenate([f["timestep"] for f in feeds])
    assert drawn.dtype == np.float32 and set(drawn.tolist()) <= set(schedule.tolist())
    assert len(set(drawn.tolist())) > 4  # spread over the schedule, not one value
    if name == "svd":
        assert -1.6 < drawn.min() and drawn.max() < 1.7  # 0.25 ln(sigma), sigma in [0.002, 700]
    else:
        assert drawn.max() > 100  # discrete timesteps: what such a UNet is trained on
