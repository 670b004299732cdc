"""Failures as Triton answers them: the kind (svd_trt/errors.py) as a status and one line.

Two limits of Triton 2.51, checked on the pip wheel's server, decide the format:
- a gRPC stream (the decoupled model's only transport) carries an error as a message alone,
  with no status code;
- a BLS call hands the caller every error response as INTERNAL, whatever code it was sent with.
So the pipeline model prefixes every error it sends with its gRPC status name (`UNAVAILABLE: this
request needs about ...`): a streaming client reads the status from the message, and the plain
model (which forwards to the pipeline model over BLS) reads it back to answer with that status.
Triton's own refusals (a full queue, a queue timeout) come without the prefix; they are capacity.

Importable without Triton: the status names are mapped to pb_utils codes by the models.
"""

from __future__ import annotations

import logging
import re

from svd_trt.errors import BUG, CAPACITY, ENGINE, GRPC_STATUS, engine_failure, kind_of, one_line

log = logging.getLogger(__name__)

CANCELLED = "CANCELLED"
UNAVAILABLE = GRPC_STATUS[CAPACITY]
INTERNAL = GRPC_STATUS[BUG]
STATUSES = (*dict.fromkeys(GRPC_STATUS.values()), CANCELLED)
# The messages of Triton's own refusals (its request queue): capacity, as a full queue is.
TRITON_CAPACITY = ("Exceeds maximum queue size", "Request timeout expired")
_TAGGED = re.compile(rf"^({'|'.join(STATUSES)}): (.*)$", re.S)


class Cancelled(Exception):
    """The client went away mid-generation."""


def describe(error: BaseException, model: str = "") -> tuple[str, str]:
    """(gRPC status name, one line) of a failed request; an engine failure or a bug is logged with
    its traceback (the client gets the one line)."""
    if isinstance(error, Cancelled):
        log.info("%s: %s; the instance is free", model or "request", error)
        return CANCELLED, str(error) or "request cancelled"
    kind = kind_of(error)
    if kind in (ENGINE, BUG):
        log.error("%s: %s", model or "request", one_line(error), exc_info=error)
    return GRPC_STATUS[kind], one_line(engine_failure(error) or error)


def tagged(status: str, message: str) -> str:
    """The decoupled model's error message: `STATUS: one line`."""
    return f"{status}: {message}"


def untag(message: str) -> tuple[str, str]:
    """(status, message) of an error the pipeline model sent, or of Triton's own refusal."""
    match = _TAGGED.match(message)
    if match:
        return match.group(1), match.group(2)
    if any(m in message for m in TRITON_CAPACITY):
        return UNAVAILABLE, message
    return INTERNAL, message


def triton_code(pb_utils, status: str, over_bls: bool = False):
    """A gRPC status name as the Python backend's TritonError code (it spells INVALID_ARGUMENT
    `INVALID_ARG`); `pb_utils` is triton_python_backend_utils, passed by the model using it.

    over_bls: the response may go to a BLS caller. Triton 2.51 never delivers a CANCELLED error
    response to a BLS caller (checked: its response iterator waits forever, and the caller's
    instance with it), so a decoupled model sends CANCELLED as INTERNAL; the status is in the
    message anyway.
    """
    if over_bls and status == CANCELLED:
        status = INTERNAL
    return getattr(pb_utils.TritonError, "INVALID_ARG" if status == "INVALID_ARGUMENT" else status)
