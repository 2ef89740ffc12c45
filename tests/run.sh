#!/usr/bin/env bash
# The test suite: real Gunicorn processes on 127.0.0.1 (sets up .venv on first use).
# It is sleep-bound (servers wait for caps and --timeout), so it runs in 12 processes,
# more than the cores (pytest-xdist; each test owns its server, port and HOME); the
# tests marked slow start first (tests/conftest.py). Arguments go to pytest: -n 0 runs
# it in one process, a path or -k a part of it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# pytest's exit code is ours: 5 ("no tests ran") fails too.
exec "$VENV/bin/python" -m pytest -q -n 12 --durations=10 "$@"
