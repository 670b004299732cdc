"""The Triton Python-backend model behind `svd` and `svd_stream`; the repository's model.py imports it.

Each model instance is its own stub process holding one SVDPipeline, so requests never
share state. `svd` answers each request with one response; `svd_stream` (decoupled)
sends `step`/`total` after every denoising step, then one final response with the
result. A bad request gets an error response with the one line `svd-trt infer` prints
for the same input; the instance keeps serving.

Importable only inside Triton's Python backend (triton_python_backend_utils).
"""

from __future__ import annotations

import json
import logging

import triton_python_backend_utils as pb_utils

from svd_trt.manifest import load_manifest
from svd_trt.runtime.pipeline import SVDPipeline
from svd_trt.runtime.runners import _physical_cores
from svd_trt.runtime.serving import contract
from svd_trt.runtime.serving.request import error_message, parse_request, progress_tensors, result_tensors

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The client went away mid-generation."""


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.gpu = int(args["model_instance_device_id"]) if args["model_instance_kind"] == "GPU" else None
        engine_dir = params["engine_dir"]
        # GPU instance k runs on CUDA device k; the runners make it current on whichever thread calls them.
        options = {"device": "cpu" if self.gpu is None else f"cuda:{self.gpu}"}
        if load_manifest(engine_dir).backend == "onnxruntime":
            options["threads"] = _threads(int(params.get("threads", "0")), config)
        self.pipe = SVDPipeline.from_engine_dir(engine_dir, **options)
        log.info("%s: opened %s (%s; %s)", args["model_name"], engine_dir, options, self.pipe.placement)

    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            return _response(self._generate(request))
        except Exception as e:  # one request's failure is that request's error response
            return pb_utils.InferenceResponse(error=_error(e))

    def _stream(self, request) -> None:
        sender = request.get_response_sender()

        def on_step(step: int, total: int) -> None:
            if _is_cancelled(request):
                raise Cancelled("request cancelled by the client")
            sender.send(_response(progress_tensors(step, total)))

        try:
            final = _response(self._generate(request, on_step))
        except Exception as e:
            final = pb_utils.InferenceResponse(error=_error(e))
        try:
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the stream is gone; nothing is waiting for this response
            log.warning("svd_stream: could not send the final response: %s", e)

    def _generate(self, request, on_step=None) -> dict:
        inputs = {}
        for spec in contract.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                inputs[spec.name] = tensor.as_numpy()
        parsed = parse_request(inputs)
        video = self.pipe(parsed.image, parsed.options, on_step=on_step)
        return result_tensors(video.frames, parsed)


def _response(tensors: dict):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])


def _error(e: Exception):
    """The CLI's one line for a bad request (HTTP 400); a bug is logged with its traceback (500)."""
    if isinstance(e, Cancelled):
        return pb_utils.TritonError(str(e), pb_utils.TritonError.CANCELLED)
    message = error_message(e)
    if message is not None:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    log.exception("svd: unexpected failure")
    first = (str(e).splitlines() or [""])[0]
    return pb_utils.TritonError(f"internal error: {type(e).__name__}: {first}", pb_utils.TritonError.INTERNAL)


def _is_cancelled(request) -> bool:
    is_cancelled = getattr(request, "is_cancelled", None)  # Triton >= 23.10
    return bool(is_cancelled and is_cancelled())


def _threads(configured: int, config: dict) -> int:
    """ONNX Runtime threads per pipeline: as configured, else the physical cores shared by the instances."""
    if configured > 0:
        return configured
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, _physical_cores() // instances)

