"""Keep the benchmark scripts working: run each with ``--quick``.

Only that they run to the end and print their table is checked; the numbers
are not (no timed assertions in the test suite: see benchmarks/README.md).
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.gunicorn_server import ROOT

pytest.importorskip("gevent", reason="the benchmarks compare the gevent workers too")

SCRIPTS = {   # script: a column of the table it prints
    "throughput.py": "ratio (median)",
    "section_cost.py": "vs nullcontext us",
    "kill_latency.py": "ended by",
    "idle_cost.py": "extra RSS MiB",
    "boot_time.py": "ratio of medians",
    "route_cost.py": "over its base us",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_quick(script):
    if script == "throughput.py" and shutil.which("wrk") is None:
        pytest.skip("wrk is not on PATH (apt-get install -y wrk)")
    done = subprocess.run([sys.executable, os.path.join("benchmarks", script), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# Python " in done.stdout, done.stdout          # the machine header
    header = next((line for line in done.stdout.splitlines() if line.startswith("| ")), "")
    assert SCRIPTS[script] in [cell.strip() for cell in header.split("|")], done.stdout
