"""The plain model (`generate`): one response per request, forwarded to the pipeline model over BLS.

HTTP and gRPC's unary call cannot reach a decoupled model (Triton's rule), and Triton models
cannot share memory, so this model holds no pipeline: each request goes, inputs untouched, to
the pipeline model (`generate_stream`, triton_model.py), whose instances serve both kinds of
client. It imports neither ONNX Runtime, the pipeline nor a family: the inputs and outputs it
forwards are those of its own config.pbtxt (rendered from the same contract as the pipeline
model's). An instance is a stub process of about 40 MB, one per pipeline, and it only waits.

What Triton 2.51 does not carry across BLS, this model restores (each checked on the pip
wheel's server):
- the status of an error: every relayed error arrives as INTERNAL; the pipeline model's
  messages carry their status (failures.py), read back here;
- the client's cancel: a BLS request cannot be cancelled, so a thread watches this model's own
  request while the pipeline runs and marks its token (state.py), which the pipeline model
  checks between steps;
- an error after other responses: it is lost (the response iterator then waits forever), so
  the request asks for no progress responses and its one response is the result or the error.

Importable only inside Triton's Python backend (triton_python_backend_utils).
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager

import triton_python_backend_utils as pb_utils

from svd_trt.runtime.serving.contract import FRAMES
from svd_trt.runtime.serving.failures import INTERNAL, triton_code, untag
from svd_trt.runtime.serving.repository import PIPELINE_MODEL
from svd_trt.runtime.serving.state import CANCEL_TOKEN, PROGRESS, STATE_DIR, CancelMarks, state_dir
from svd_trt.runtime.serving.triton_log import forward_logs

log = logging.getLogger(__name__)

WATCH_S = 0.1  # how often the client's cancel is looked for: well under one denoising step


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        forward_logs(pb_utils)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.pipeline = params[PIPELINE_MODEL]
        self.marks = CancelMarks(state_dir(params.get(STATE_DIR)))

    def execute(self, requests: list) -> list:
        return [self._forward(request) for request in requests]

    def _forward(self, request):
        token = self.marks.new_token()
        inputs = [pb_utils.get_input_tensor_by_name(request, name) for name in self.inputs]
        forwarded = pb_utils.InferenceRequest(
            model_name=self.pipeline,
            inputs=[t for t in inputs if t is not None],
            requested_output_names=self.outputs,
            parameters={CANCEL_TOKEN: token, PROGRESS: False},
        )
        final = None
        try:
            with self._watch(request, token):
                for response in forwarded.exec(decoupled=True):
                    final = self._relay(response) or final
        except Exception as e:  # the pipeline model cannot be reached (unloaded, stopping)
            final = _error(*untag(str(e)))
        finally:
            self.marks.clear(token)
        if final is None:
            log.error("%s: %s sent no result", self.name, self.pipeline)
            final = _error(INTERNAL, f"internal error: {self.pipeline} sent no result")
        return final

    @contextmanager
    def _watch(self, request, token: str):
        """While the block runs, mark `token` as soon as the client cancels `request`."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(WATCH_S):
                if request.is_cancelled():
                    self.marks.cancel(token)
                    return

        watcher = threading.Thread(target=watch, name=f"{self.name}-cancel", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()

    def _relay(self, response):
        """The client's response for the pipeline model's: its result, or its error with its status."""
        if response.has_error():
            return _error(*untag(response.error().message()))
        tensors = {t.name(): t for t in response.output_tensors()}
        if FRAMES.name not in tensors:
            return None  # the empty response that only closes the stream
        return pb_utils.InferenceResponse(output_tensors=[tensors[n] for n in self.outputs if n in tensors])


def _error(status: str, message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code(pb_utils, status)))
