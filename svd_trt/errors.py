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


def first_line(error: BaseException) -> str:
    """Another library's exception as a phrase: its first non-blank line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
