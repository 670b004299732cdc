"""The model repository writer and the two commands' argument and error paths, without a server."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import ltx_engines

from svd_trt.engines.cli import main as svd_export
from svd_trt.families.ltx.family import LTX
from svd_trt.families.svd.family import SVD
from svd_trt.runtime.cli import main as svd_trt
from svd_trt.runtime.devices import DeviceError
from svd_trt.runtime.serving import contract, server
from svd_trt.runtime.serving.caps import RequestCaps
from svd_trt.runtime.serving.contract import contract_for
from svd_trt.runtime.serving.repository import RepositoryError, RepositoryOptions, write_repository


def parse_config(text: str):
    """config.pbtxt through Triton's own ModelConfig message (shipped with tritonclient)."""
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="the serve extra is not installed"
    )
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_writes_both_models_from_the_contract(tiny_engines, tmp_path):
    caps = RequestCaps(max_steps=50, max_frames=9, max_pixels=1000)
    opts = RepositoryOptions(instances=3, max_queue=5, queue_timeout_s=2.5, caps=caps, memory_limit=7 * 2**30)
    repo = write_repository(tiny_engines, tmp_path / "repo", opts)
    assert sorted(p.name for p in repo.iterdir()) == ["generate", "generate_stream"]
    for model in (contract.MODEL, contract.STREAM_MODEL):
        config = parse_config((repo / model / "config.pbtxt").read_text())
        assert config.name == model and config.backend == "python" and config.max_batch_size == 0
        assert [(i.name, list(i.dims), i.optional) for i in config.input] == [
            (t.name, list(t.dims), t.optional) for t in contract_for(SVD).inputs
        ]
        assert [o.name for o in config.output] == [t.name for t in contract.outputs_of(model)]
        assert [(g.count, g.kind) for g in config.instance_group] == [(3, config.instance_group[0].KIND_CPU)]
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size == 5 and policy.default_timeout_microseconds == 2_500_000
        assert policy.timeout_action == policy.REJECT
        assert config.model_transaction_policy.decoupled == (model == contract.STREAM_MODEL)
    # One model holds the pipelines and reads the engines, caps and limit; the other forwards to it.
    stream = parse_config((repo / "generate_stream" / "config.pbtxt").read_text()).parameters
    plain = parse_config((repo / "generate" / "config.pbtxt").read_text()).parameters
    assert {k: v.string_value for k, v in stream.items()} == {
        "engine_dir": str(tiny_engines.resolve()),
        "threads": "0",
        "memory_limit": str(7 * 2**30),
        "max_steps": "50",
        "max_frames": "9",
        "max_pixels": "1000",
    }
    assert {k: v.string_value for k, v in plain.items()} == {"pipeline_model": "generate_stream"}
    assert (
        "triton_model import TritonPythonModel" in (repo / "generate_stream" / "1" / "model.py").read_text()
    )
    assert "triton_front import TritonPythonModel" in (repo / "generate" / "1" / "model.py").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left"


def test_the_inputs_are_the_engines_family_contract(tiny_engines, tmp_path_factory, tmp_path):
    """The writer reads the family from the manifest: an LTX-Video directory gets LTX's inputs (a
    required prompt, an optional image, its options with their datatypes), an SVD one SVD's."""
    from tritonclient.grpc.model_config_pb2 import DataType

    for engines, family in ((ltx_engines(tmp_path_factory), LTX), (tiny_engines, SVD)):
        repo = write_repository(engines, tmp_path / family.name)
        for model in (contract.MODEL, contract.STREAM_MODEL):
            config = parse_config((repo / model / "config.pbtxt").read_text())
            datatypes = {"BYTES": "TYPE_STRING"}
            assert [(i.name, DataType.Name(i.data_type), i.optional) for i in config.input] == [
                (t.name, datatypes.get(t.datatype, f"TYPE_{t.datatype}"), t.optional)
                for t in contract_for(family).inputs
            ]
    ltx = parse_config((tmp_path / "ltx" / contract.MODEL / "config.pbtxt").read_text())
    optional = {i.name: i.optional for i in ltx.input}
    assert optional["prompt"] is False and optional["image"] is True and "motion_bucket_id" not in optional


def test_tensorrt_engines_get_gpu_instances(tiny_engines, tmp_path):
    engines = tmp_path / "engines-trt"
    shutil.copytree(tiny_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    (engines / "manifest.json").write_text(json.dumps(manifest))
    repo = write_repository(engines, tmp_path / "repo", RepositoryOptions(instances=2))
    config = parse_config((repo / "generate" / "config.pbtxt").read_text())
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_GPU)]


def test_onnxruntime_on_cuda_gets_gpu_instances_and_tensorrt_never_cpu(tiny_engines, tmp_path):
    """ONNX Runtime's CUDA instances are Triton GPU instances like TensorRT's (instance k on GPU k)."""
    repo = write_repository(tiny_engines, tmp_path / "repo", RepositoryOptions(instances=2, device="cuda"))
    config = parse_config((repo / "generate" / "config.pbtxt").read_text())
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_GPU)]
    engines = tmp_path / "engines-trt"
    shutil.copytree(tiny_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    (engines / "manifest.json").write_text(json.dumps({**manifest, "backend": "tensorrt"}))
    with pytest.raises(DeviceError, match="^TensorRT engines run on a CUDA GPU only"):
        write_repository(engines, tmp_path / "r2", RepositoryOptions(device="cpu"))


def test_serve_on_cuda_without_the_cuda_provider_is_one_line_before_the_server(tiny_engines, monkeypatch):
    """onnxruntime (the CPU build) here: refused before tritonserver starts or any stub loads."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has the CUDA provider")
    from svd_trt.runtime.serving import serve

    monkeypatch.setattr(serve, "find_triton", lambda: "tritonserver")  # found; never started
    started = []
    monkeypatch.setattr(server.TritonServer, "start", lambda self: started.append(self))
    result = CliRunner().invoke(svd_trt, ["serve", "--engines", str(tiny_engines), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(
        "Error: --device cuda: ONNX Runtime has no CUDA execution provider here (onnxruntime "
    )
    assert started == []


def test_refuses_what_it_cannot_write(tiny_engines, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="exists and is not empty"):
        write_repository(tiny_engines, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(RepositoryError, match="instances must be at least 1"):
        write_repository(tiny_engines, tmp_path / "r", RepositoryOptions(instances=0))
    with pytest.raises(RepositoryError, match="must be >= 0"):
        write_repository(tiny_engines, tmp_path / "r", RepositoryOptions(caps=RequestCaps(max_steps=-1)))
    (tmp_path / "empty").mkdir()
    assert (write_repository(tiny_engines, tmp_path / "empty") / contract.MODEL / "config.pbtxt").exists()


def test_triton_repo_command(tiny_engines, tmp_path):
    result = CliRunner().invoke(
        svd_export,
        ["triton-repo", "--engines", str(tiny_engines), "--out", str(tmp_path / "r"), "--instances", "2"]
        + ["--queue-timeout", "0", "--max-steps", "30", "--memory-limit", "1.5"],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r" / "generate_stream" / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in text and "default_timeout_microseconds" not in text  # 0: none
    params = {k: v.string_value for k, v in parse_config(text).parameters.items()}
    assert params["max_steps"] == "30" and params["memory_limit"] == str(int(1.5 * 2**30))
    assert params["max_frames"] == str(RequestCaps().max_frames)  # the documented defaults
    assert "state_dir" not in params  # another tritonserver: one directory per server process (state.py)
    result = CliRunner().invoke(
        svd_export, ["triton-repo", "--engines", str(tmp_path / "no"), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'no'}: engine directory not found"]


def test_serve_without_the_extra_is_one_line(tiny_engines, monkeypatch):
    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(svd_trt, ["serve", "--engines", str(tiny_engines)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: serving needs Triton Inference Server from the serve extra: pip install 'svd-trt[serve]'"
    ]


def test_server_environment_puts_this_python_first(monkeypatch, tmp_path):
    install = server.TritonInstall(tmp_path, tmp_path, tmp_path, tmp_path / "libs")
    env = server.server_environment(install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(":")[0] == str(server.Path(server.sys.executable).parent)
    assert env["PATH"].endswith(":/usr/bin")
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert str(tmp_path / "libs") in libs and libs[-1] == "/opt/lib"
