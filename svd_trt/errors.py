"""Every failure in one of four kinds, decided here once: the request's fault, capacity, engine, bug.

Expected failures are `UserError`s: one line for the user. Each layer raises its own subclass
(CheckpointError, ManifestError, PipelineError, ...), so library callers can catch precisely;
the commands catch `UserError` once (svd_trt.cli) and print `Error: <message>` with exit code 2,
and a server answers by kind (`kind_of`):

    kind        what                                                HTTP   gRPC / Triton
    request     the request's fault (a UserError)                   400    INVALID_ARGUMENT
    capacity    no room now: memory, a full queue (CapacityError)   503    UNAVAILABLE
    engine      an engine failed on a valid request (EngineError)   500    INTERNAL, one line
    bug         anything else: keeps its traceback                  500    INTERNAL

Other libraries' exceptions become one of these at the boundary where a component runs
(`engine_failure`): ONNX Runtime's Python exceptions (onnxruntime_pybind11_state.Fail,
InvalidArgument, RuntimeException, ...) are not RuntimeErrors, so they are recognized by the
module that defines them, as are TensorRT's, Polygraphy's and CUDA's; a RuntimeError counts
only when raised while a component runs (our CUDA wrappers, the torch backend).
"""

from __future__ import annotations

REQUEST, CAPACITY, ENGINE, BUG = "request", "capacity", "engine", "bug"
KINDS = (REQUEST, CAPACITY, ENGINE, BUG)
HTTP_STATUS = {REQUEST: 400, CAPACITY: 503, ENGINE: 500, BUG: 500}
# gRPC's canonical names; Triton's Python backend spells INVALID_ARGUMENT `INVALID_ARG`.
GRPC_STATUS = {REQUEST: "INVALID_ARGUMENT", CAPACITY: "UNAVAILABLE", ENGINE: "INTERNAL", BUG: "INTERNAL"}

# Top-level packages whose exceptions are a backend failing: ONNX Runtime, TensorRT, Polygraphy
# (and its CUDA wrapper), cuda-python. Not torch: outside a component's run (the export) its
# exceptions are ours to debug, with their traceback.
BACKEND_PACKAGES = frozenset({"onnxruntime", "tensorrt", "polygraphy", "cuda"})
# How backends say they ran out of memory (ONNX Runtime: "Failed to allocate memory for requested
# buffer", "bad allocation"; CUDA and torch: "out of memory"): capacity, not an engine fault.
OUT_OF_MEMORY = ("failed to allocate memory", "bad allocation", "bad_alloc", "out of memory")
ENGINE_PREFIX = "the engines cannot run this request"


class UserError(Exception):
    """An expected failure (bad input, missing file, unsupported request): one line."""

    def __str__(self) -> str:
        text = super().__str__()
        return text.splitlines()[0] if text else type(self).__name__


class CapacityError(UserError):
    """Not the request's fault: no room for it now (memory, a full queue). A server answers 503 /
    UNAVAILABLE, so a load balancer retries elsewhere; the CLI prints the one line."""


class EngineError(UserError):
    """An engine failed while running a valid request (a backend's exception, non-finite output): a
    server answers 500 with this one line and logs the traceback."""


def first_line(error: BaseException) -> str:
    """Another library's exception as a phrase: its first non-blank line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def backend_of(error: BaseException) -> str | None:
    """The backend package that defines the error's type (or a base of it); None for any other."""
    for cls in type(error).__mro__:
        package = cls.__module__.partition(".")[0]
        if package in BACKEND_PACKAGES:
            return package
    return None


def engine_failure(error: BaseException, component: str | None = None) -> UserError | None:
    """A backend's exception as EngineError (CapacityError when it ran out of memory); None otherwise.

    `component`: the error was raised while that component ran, so a RuntimeError (what our CUDA
    wrappers and torch raise) or a MemoryError is the engine's too. UserErrors are returned as
    they are: they were classified where they were raised.
    """
    if isinstance(error, UserError):
        return error
    backend = backend_of(error)
    if backend is None and not (component and isinstance(error, (RuntimeError, MemoryError))):
        return None
    line = f"{component}: {first_line(error)}" if component else f"{backend}: {first_line(error)}"
    if isinstance(error, MemoryError) or any(m in line.lower() for m in OUT_OF_MEMORY):
        return CapacityError(f"out of memory: {line}")
    return EngineError(f"{ENGINE_PREFIX}: {line}" if component else line)


def kind_of(error: BaseException) -> str:
    """REQUEST, CAPACITY, ENGINE or BUG; backend exceptions count as what engine_failure makes them."""
    error = engine_failure(error) or error
    if isinstance(error, CapacityError):
        return CAPACITY
    if isinstance(error, EngineError):
        return ENGINE
    return REQUEST if isinstance(error, UserError) else BUG


def one_line(error: BaseException) -> str:
    """What a user or client is told: the expected failure's line, or `internal error: Type: line`."""
    expected = engine_failure(error)
    if expected is not None:
        return str(expected)
    return f"internal error: {type(error).__name__}: {first_line(error)}"
