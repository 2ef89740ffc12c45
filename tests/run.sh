#!/usr/bin/env bash
# The test suite: real Gunicorn processes on 127.0.0.1 (sets up .venv on first use).
# Two groups, one after the other:
# - the parallel group, every test not marked quiet.  It is sleep-bound (servers wait
#   for caps and --timeout), so it runs in 12 processes, more than the cores
#   (pytest-xdist; each test owns its server, port and HOME); the tests marked slow
#   start first (tests/conftest.py);
# - the quiet group, the tests marked quiet, in one process once the other is done:
#   they judge latencies against tight bounds and need the machine to themselves (the
#   soak wants a cancellation's 504 within 1 s of its cap; a machine running 12 test
#   processes delays it past that).
# Arguments go to pytest in both groups (-m is the script's own): a path or -k runs a
# part of the suite, -n 0 runs the parallel group in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
for arg in "$@"; do
    case "$arg" in -m|-m*) echo "tests/run.sh: -m is the script's own (the groups)" >&2; exit 4;; esac
done
set +e          # (both groups run; their exit codes are combined below)
"$VENV/bin/python" -m pytest -q -n 12 -m "not quiet" --durations=10 "$@"
parallel=$?
case "$parallel" in
    0|1|5) ;;                       # passed, failed, or none selected: the quiet group runs
    *) exit "$parallel" ;;          # interrupted, an internal or a usage error: stop here
esac
"$VENV/bin/python" -m pytest -q -m quiet --durations=3 "$@"
quiet=$?
# pytest's exit codes are ours.  5 ("no tests ran") fails when neither group ran a test;
# it is fine for one group when the arguments selected tests of the other only.
if [ "$parallel" -eq 5 ] && [ "$quiet" -eq 5 ]; then exit 5; fi
if [ "$parallel" -ne 0 ] && [ "$parallel" -ne 5 ]; then exit "$parallel"; fi
if [ "$quiet" -ne 5 ]; then exit "$quiet"; fi
exit 0
