"""A small tritonclient wrapper for the contract: one video over HTTP, or progress then the video
over a gRPC stream, for the engines of any family. The inputs' datatypes come from the server's
model metadata (or, without a server, from a contract: `contract_for(family).datatypes()`). Used by
the tests and scripts/load_test.py; needs the serve extra (tritonclient)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Mapping
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


def request_arrays(datatypes: Mapping[str, str], **values) -> dict[str, np.ndarray]:
    """name -> [1] array in the input's datatype (`datatypes`: name -> Triton datatype); inputs left
    out keep the server's defaults. Texts may be str (sent as UTF-8), files bytes."""
    out = {}
    for name, value in values.items():
        if name not in datatypes:
            raise ValueError(f"{name}: not an input of the contract; inputs: {', '.join(datatypes)}")
        dtype = _NUMPY[datatypes[name]]
        if dtype is np.object_ and isinstance(value, str):
            value = value.encode()
        out[name] = np.array([value], dtype=dtype)
    return out


def tensors(module, arrays: dict[str, np.ndarray]) -> list:
    """`module`'s (tritonclient.http or .grpc) InferInputs holding `arrays`."""
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in arrays.items():
        tensor = module.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


def input_datatypes(client, model: str) -> dict[str, str]:
    """name -> datatype of `model`'s inputs, from the server's metadata (an http or grpc client)."""
    meta = client.get_model_metadata(model, **({} if _is_http(client) else {"as_json": True}))
    return {i["name"]: i["datatype"] for i in meta["inputs"]}


def _is_http(client) -> bool:
    return type(client).__module__.startswith("tritonclient.http")


@contextmanager
def http_client(url: str, timeout_s: float = TIMEOUT_S) -> Iterator:
    """tritonclient.http client, always closed: an open one holds the server's shutdown for its exit timeout."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()


def generate(url: str, model: str = contract.MODEL, **values) -> dict[str, np.ndarray]:
    """One request over HTTP (`url` = host:port): the outputs it returned (frames, and video for mp4).

    `values`: the family's inputs (image=bytes, prompt=str, ...), options and output_format.
    Raises tritonclient's InferenceServerException for an error response."""
    import tritonclient.http as http

    with http_client(url) as client:
        arrays = request_arrays(input_datatypes(client, model), **values)
        result = client.infer(model, tensors(http, arrays))
        names = [o["name"] for o in result.get_response()["outputs"]]
        return {name: result.as_numpy(name) for name in names}


def stream_request(url: str, callback: Callable, **values):
    """A gRPC client with a stream open to the stream model and one request sent on it; each
    response goes to `callback(result, error)`. The caller stops the stream and closes the client."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    try:
        arrays = request_arrays(input_datatypes(client, contract.STREAM_MODEL), **values)
        client.start_stream(callback=callback)
        client.async_stream_infer(contract.STREAM_MODEL, tensors(grpc, arrays))
    except BaseException:
        client.close()
        raise
    return client


def generate_streaming(
    url: str, on_progress: Callable[[int, int], None] | None = None, **values
) -> StreamResult:
    """The stream model over gRPC (`url` = host:port): progress responses, then the final outputs.

    Raises tritonclient's InferenceServerException for an error response.
    """
    responses: queue.Queue = queue.Queue()
    client = stream_request(url, lambda result, error: responses.put((result, error)), **values)
    try:
        progress = []
        while True:
            result, error = responses.get(timeout=TIMEOUT_S)
            if error is not None:
                raise error
            names = [o.name for o in result.get_response().outputs]
            if set(names) == {p.name for p in contract.PROGRESS}:
                step, total = int(result.as_numpy("step")[0]), int(result.as_numpy("total")[0])
                progress.append((step, total))
                if on_progress:
                    on_progress(step, total)
                continue
            return StreamResult(progress, {name: result.as_numpy(name) for name in names})
    finally:
        client.stop_stream()
        client.close()
