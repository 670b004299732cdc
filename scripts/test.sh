#!/usr/bin/env bash
# Sets up .venv and runs the test suite (everything but `slow`; GPU/TensorRT tests skip
# with a reason where there is none). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -m "not slow" -q "$@"
