"""The one base class of every expected failure: its message is one line for the user.

Each layer raises its own subclass (CheckpointError, ManifestError, PipelineError, ...), so
library callers can catch precisely; the commands catch `UserError` once (svd_trt.cli) and
print `Error: <message>` with exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
