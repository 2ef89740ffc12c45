#!/usr/bin/env bash
# The test suite: real Gunicorn processes on 127.0.0.1 (sets up .venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# pytest's exit code is ours: 5 ("no tests ran") fails too.
exec "$VENV/bin/python" -m pytest -q "$@"
