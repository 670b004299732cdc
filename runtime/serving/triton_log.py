"""svd_trt's log records in Triton's server log, through the Python backend's own logger.

A stub's Python `logging` has no handler, so without this only warnings reach the server's
stderr, unformatted, and an engine failure's traceback is lost. Records at INFO and above go
to `pb_utils.Logger` (Triton prints INFO at its default verbosity): a line per request
(memory admitted, a cancel) and the traceback of every engine failure or bug.
"""

from __future__ import annotations

import logging


class TritonLogHandler(logging.Handler):
    """Sends each record to triton_python_backend_utils.Logger at the matching level."""

    def __init__(self, logger) -> None:
        super().__init__()
        self.logger = logger
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self.logger.log_error(text)
        elif record.levelno >= logging.WARNING:
            self.logger.log_warn(text)
        else:
            self.logger.log_info(text)


def forward_logs(pb_utils, level: int = logging.INFO) -> None:
    """Route the `svd_trt` loggers to Triton's log (once per process)."""
    root = logging.getLogger("svd_trt")
    if not any(isinstance(h, TritonLogHandler) for h in root.handlers):
        root.addHandler(TritonLogHandler(pb_utils.Logger))
    root.setLevel(level)
