"""A small tritonclient wrapper for the contract: requests built from contract.INPUTS, one
video over HTTP, or progress then the video over a gRPC stream. Used by the tests and
scripts/load_test.py; needs the serve extra (tritonclient)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from svd_trt.runtime.serving import contract

_NUMPY = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}
TIMEOUT_S = 600.0  # tritonclient's 60 s default is shorter than one CPU video


@dataclass
class StreamResult:
    progress: list[tuple[int, int]]  # (step, total) in the order they arrived
    outputs: dict[str, np.ndarray]


def request_arrays(image: bytes, output_format: str | None = None, **options) -> dict[str, np.ndarray]:
    """name -> [1] array in the contract's datatype; options left out keep the server's defaults."""
    specs = {s.name: s for s in contract.INPUTS}
    values = {"image": image, **options}
    if output_format is not None:
        values["output_format"] = output_format
    out = {}
    for name, value in values.items():
        if name not in specs:
            raise ValueError(f"{name}: not an input of the contract; inputs: {', '.join(specs)}")
        dtype = _NUMPY[specs[name].datatype]
        if dtype is np.object_ and isinstance(value, str):
            value = value.encode()
        out[name] = np.array([value], dtype=dtype)
    return out


def _inputs(module, arrays: dict[str, np.ndarray]) -> list:
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in arrays.items():
        tensor = module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


@contextmanager
def http_client(url: str, timeout_s: float = TIMEOUT_S) -> Iterator:
    """tritonclient.http client, always closed: an open one holds the server's shutdown for its exit timeout."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()


def generate(url: str, image: bytes, model: str = contract.MODEL, **options) -> dict[str, np.ndarray]:
    """One request over HTTP (`url` = host:port): the outputs it returned (frames, and video for mp4)."""
    import tritonclient.http as http

    with http_client(url) as client:
        result = client.infer(model, _inputs(http, request_arrays(image, **options)))
        names = [o["name"] for o in result.get_response()["outputs"]]
        return {name: result.as_numpy(name) for name in names}


def generate_streaming(
    url: str, image: bytes, on_progress: Callable[[int, int], None] | None = None, **options
) -> StreamResult:
    """svd_stream over gRPC (`url` = host:port): progress responses, then the final outputs.

    Raises tritonclient's InferenceServerException for an error response.
    """
    import tritonclient.grpc as grpc

    responses: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(contract.STREAM_MODEL, _inputs(grpc, request_arrays(image, **options)))
        progress = []
        while True:
            result, error = responses.get(timeout=TIMEOUT_S)
            if error is not None:
                raise error
            names = [o.name for o in result.get_response().outputs]
            if set(names) == {"step", "total"}:
                step, total = int(result.as_numpy("step")[0]), int(result.as_numpy("total")[0])
                progress.append((step, total))
                if on_progress:
                    on_progress(step, total)
                continue
            return StreamResult(progress, {name: result.as_numpy(name) for name in names})
    finally:
        client.stop_stream()
        client.close()
