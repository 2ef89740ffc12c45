"""The soak, short (``benchmarks/soak.py --quick``): a minute of mixed traffic and faults.

Every answer is checked by the soak itself against the README's semantics
(``benchmarks/soak_rules.py``); here, that it found nothing unexpected, no
leak and no process left behind, and that it really ran every kind of request
and fault (it says so, and fails, when one never happened).
"""

import os
import re
import subprocess
import sys

import pytest

from tests.gunicorn_server import ROOT

pytest.importorskip("gevent", reason="the soak runs the gevent worker too")


def test_a_quick_soak_finds_nothing_unexpected():
    done = subprocess.run([sys.executable, os.path.join("benchmarks", "soak.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    m = re.match(r"soak: (\d+) requests, (\d+) unexpected, (\d+) workers ended, (\d+) leaks, "
                 r"(\d+) processes left behind", summary)
    assert m, out
    requests, unexpected, replaced, leaks, left = map(int, m.groups())
    assert (unexpected, leaks, left) == (0, 0, 0), out
    assert done.returncode == 0, out
    assert requests > 50 and replaced > 0, out
