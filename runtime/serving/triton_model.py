"""The pipeline model (`generate_stream`): the one Triton model that holds pipelines.

Each instance is its own stub process holding one pipeline of the engines' family
(runtime/engine_pipeline.py open_pipeline), so requests never share state. It is decoupled:
after every denoising step it sends `step`/`total`, then one final response with the result.
Streaming clients call it directly (gRPC); the plain model (triton_front.py) forwards every
request to it over BLS, so an instance serves both and a server holds one pipeline per instance.

Per request, in order: parse by the family's contract (contract.py, request.py), resolve against
the engines (the family's `resolve`), the server's caps (caps.py), server-wide memory admission
(admission.py), then the family's `generate`, with cancellation checked between steps (the
client's own cancel on a stream; the plain model's mark, state.py). An error is one line
prefixed with its status (failures.py); an engine failure or a bug also goes to the server log
with its traceback. The instance keeps serving.

Importable only inside Triton's Python backend (triton_python_backend_utils).
"""

from __future__ import annotations

import json
import logging

import triton_python_backend_utils as pb_utils

from svd_trt.manifest import load_manifest
from svd_trt.runtime.engine_pipeline import open_pipeline
from svd_trt.runtime.runners import _physical_cores
from svd_trt.runtime.serving.admission import Admission
from svd_trt.runtime.serving.caps import RequestCaps
from svd_trt.runtime.serving.contract import contract_for
from svd_trt.runtime.serving.failures import Cancelled, describe, tagged, triton_code
from svd_trt.runtime.serving.repository import MEMORY_LIMIT
from svd_trt.runtime.serving.request import parse_request, progress_tensors, result_tensors
from svd_trt.runtime.serving.state import CANCEL_TOKEN, PROGRESS, STATE_DIR, CancelMarks, state_dir
from svd_trt.runtime.serving.triton_log import forward_logs

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        forward_logs(pb_utils)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.gpu = int(args["model_instance_device_id"]) if args["model_instance_kind"] == "GPU" else None
        engine_dir = params["engine_dir"]
        # GPU instance k runs on CUDA device k; the runners make it current on whichever thread calls them.
        options = {"device": "cpu" if self.gpu is None else f"cuda:{self.gpu}"}
        if load_manifest(engine_dir).backend == "onnxruntime":
            options["threads"] = _threads(int(params.get("threads", "0")), config)
        self.pipe = open_pipeline(engine_dir, **options)
        self.contract = contract_for(self.pipe.family)
        # Admission checks memory server-wide before the run; the pipeline's own check would
        # see this process alone.
        self.plan, self.pipe.memory = self.pipe.memory, None
        root = state_dir(params.get(STATE_DIR))
        self.admission = Admission(root, int(params.get(MEMORY_LIMIT, "0")))
        self.marks = CancelMarks(root)
        self.caps = RequestCaps.from_parameters(params)
        log.info(
            "%s: opened %s engines %s (%s; %s), %s",
            self.name, self.pipe.family.title, engine_dir, options, self.pipe.placement, self.caps,
        )  # fmt: skip

    def execute(self, requests: list) -> None:
        for request in requests:
            self._serve(request)
        return None

    def _serve(self, request) -> None:
        sender = request.get_response_sender()
        params = _parameters(request)
        token, progress = params.get(CANCEL_TOKEN), params.get(PROGRESS, True)

        def check_cancelled(where: str) -> None:
            if request.is_cancelled() or self.marks.is_cancelled(token):
                raise Cancelled(f"request cancelled by the client {where}")

        def on_step(step: int, total: int) -> None:
            check_cancelled(f"after step {step} of {total}")
            if progress:
                sender.send(_response(progress_tensors(step, total)))

        try:
            check_cancelled("before it started")  # while it waited in the queue
            final = _response(self._generate(request, on_step))
        except Exception as e:  # one request's failure is that request's error response
            status, message = describe(e, self.name)
            final = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    tagged(status, message), triton_code(pb_utils, status, over_bls=True)
                )
            )
        try:
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the stream is gone; nothing is waiting for this response
            log.warning("%s: could not send the final response: %s", self.name, e)

    def _generate(self, request, on_step) -> dict:
        tensors = {}
        for spec in self.contract.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                tensors[spec.name] = tensor.as_numpy()
        parsed = parse_request(self.contract, tensors)
        opts = self.pipe.resolve(parsed.options)
        self.caps.check(opts)
        with self.admission.admit(self.plan, self.pipe.cfg, opts):
            video = self.pipe.generate(parsed.inputs, opts, None, on_step)
        return result_tensors(video.frames, parsed.output_format, self.pipe.family.output_fps(opts))


def _response(tensors: dict):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])


def _parameters(request) -> dict:
    try:
        return json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}


def _threads(configured: int, config: dict) -> int:
    """ONNX Runtime threads per pipeline: as configured, else the physical cores shared by every
    pipeline of the server (this model's instances are all of them)."""
    if configured > 0:
        return configured
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, _physical_cores() // instances)
