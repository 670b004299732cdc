"""The directory a server's model instances share, and the cancellation marks kept in it.

Every model instance is its own process (a Python-backend stub), so what they must agree on
lives in files: admission's ledger of the requests in flight (admission.py) and a mark per
cancelled plain request. The plain model forwards each request to the pipeline model over BLS,
and Triton 2.51 cannot cancel a BLS request (checked: the pipeline model never sees the client
cancel); the plain model watches its own request, marks the request's token when it is
cancelled, and the pipeline model looks for the mark between steps.

`svd-trt serve` puts the directory in its temporary directory (removed at stop); a repository
run by another tritonserver uses one per server process under the temporary directory.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

STATE_DIR = "state_dir"  # the models' config parameter
# The plain model's BLS request parameters: the token naming its mark, and progress off (Triton
# 2.51 loses an error response sent over BLS after any other response: checked).
CANCEL_TOKEN, PROGRESS = "cancel_token", "progress"


def state_dir(configured: str | None) -> Path:
    """The configured directory, else one for this tritonserver (every stub's parent) in /tmp."""
    root = Path(configured) if configured else Path(tempfile.gettempdir()) / f"svd-trt-serving-{os.getppid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


class CancelMarks:
    """One empty file per cancelled request, named by the token the plain model gave it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "cancelled"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    def _path(self, token: str) -> Path:
        if not token.isalnum():  # the token names a file: never a path
            raise ValueError(f"not a cancellation token: {token!r}")
        return self.root / token

    def cancel(self, token: str) -> None:
        self._path(token).touch()

    def is_cancelled(self, token: str | None) -> bool:
        return bool(token) and self._path(token).exists()

    def clear(self, token: str) -> None:
        self._path(token).unlink(missing_ok=True)
