"""The model repository writer and the two commands' argument and error paths, without a server."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from svd_trt.engines.cli import main as svd_export
from svd_trt.runtime.cli import main as svd_trt
from svd_trt.runtime.devices import DeviceError
from svd_trt.runtime.serving import contract, server
from svd_trt.runtime.serving.repository import RepositoryError, RepositoryOptions, write_repository


def parse_config(text: str):
    """config.pbtxt through Triton's own ModelConfig message (shipped with tritonclient)."""
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="the serve extra is not installed"
    )
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_writes_both_models_from_the_contract(tiny_engines, tmp_path):
    repo = write_repository(tiny_engines, tmp_path / "repo", RepositoryOptions(instances=3, max_queue=5))
    assert sorted(p.name for p in repo.iterdir()) == ["svd", "svd_stream"]
    for model in (contract.MODEL, contract.STREAM_MODEL):
        config = parse_config((repo / model / "config.pbtxt").read_text())
        assert config.name == model and config.backend == "python" and config.max_batch_size == 0
        assert [(i.name, list(i.dims), i.optional) for i in config.input] == [
            (t.name, list(t.dims), t.optional) for t in contract.INPUTS
        ]
        assert [o.name for o in config.output] == [t.name for t in contract.outputs_of(model)]
        assert [(g.count, g.kind) for g in config.instance_group] == [(3, config.instance_group[0].KIND_CPU)]
        assert config.dynamic_batching.default_queue_policy.max_queue_size == 5
        assert config.model_transaction_policy.decoupled == (model == contract.STREAM_MODEL)
        assert config.parameters["engine_dir"].string_value == str(tiny_engines.resolve())
        assert "import TritonPythonModel" in (repo / model / "1" / "model.py").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left"


def test_tensorrt_engines_get_gpu_instances(tiny_engines, tmp_path):
    engines = tmp_path / "engines-trt"
    shutil.copytree(tiny_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    (engines / "manifest.json").write_text(json.dumps(manifest))
    repo = write_repository(engines, tmp_path / "repo", RepositoryOptions(instances=2))
    config = parse_config((repo / "svd" / "config.pbtxt").read_text())
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_GPU)]


def test_onnxruntime_on_cuda_gets_gpu_instances_and_tensorrt_never_cpu(tiny_engines, tmp_path):
    """ONNX Runtime's CUDA instances are Triton GPU instances like TensorRT's (instance k on GPU k)."""
    repo = write_repository(tiny_engines, tmp_path / "repo", RepositoryOptions(instances=2, device="cuda"))
    config = parse_config((repo / "svd" / "config.pbtxt").read_text())
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
    assert line.startswith("Error: --device cuda: ONNX Runtime has no CUDA execution provider here (onnxruntime ")
    assert started == []


def test_refuses_what_it_cannot_write(tiny_engines, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="exists and is not empty"):
        write_repository(tiny_engines, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(RepositoryError, match="instances must be at least 1"):
        write_repository(tiny_engines, tmp_path / "r", RepositoryOptions(instances=0))
    (tmp_path / "empty").mkdir()
    assert (write_repository(tiny_engines, tmp_path / "empty") / "svd" / "config.pbtxt").exists()


def test_triton_repo_command(tiny_engines, tmp_path):
    result = CliRunner().invoke(
        svd_export,
        ["triton-repo", "--engines", str(tiny_engines), "--out", str(tmp_path / "r"), "--instances", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "count: 2 kind: KIND_CPU" in (tmp_path / "r" / "svd_stream" / "config.pbtxt").read_text()
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
