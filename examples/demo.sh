#!/usr/bin/env bash
# The demo: a real Gunicorn with heartworker (sets up .venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec "$VENV/bin/python" examples/demo.py
