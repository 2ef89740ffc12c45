"""Startup, reload, stop and a dead arbiter, for both workers, against real Gunicorn."""

import os
import re
import signal
import time

import pytest

from tests.timing import in_background, wait_dead

TIMEOUT = 2
MARGIN = 3.0
# Busy in Python inside a section: the sync worker's thread and gevent's hub are both held.
LONG = "/section_busy?s=60&cap=120&name=long"


@pytest.fixture
def start(each_worker):
    return lambda **kw: each_worker(timeout=TIMEOUT, **kw)


def test_slow_startup_survives_a_short_timeout(start):
    srv = start(env={"APP_STARTUP_SLEEP": "5"})
    assert srv.get("/pid").status_code == 200
    assert "WORKER TIMEOUT" not in srv.log()
    assert len(srv.worker_pids()) == 1


def test_hung_startup_is_killed_at_its_cap_with_the_stack(start):
    srv = start(ready=False, env={"APP_STARTUP_HANG": "1", "HEARTWORKER_STARTUP_CAP": "2"})
    m = srv.wait_for_log(r"section 'startup' ran past its cap: ([\d.]+) s elapsed, cap 2 s",
                         timeout=2 + MARGIN + 5)
    assert m, srv.log()
    assert 2.0 <= float(m.group(1)) < 2 + MARGIN
    assert "hang_at_startup" in srv.log()
    assert srv.wait_for_log(r"Booting worker with pid: \d+[\s\S]*Booting worker with pid", 10), \
        "the arbiter respawns the aborted worker"


def test_hup_mid_section_vouches_only_for_graceful_timeout(start):
    srv = start()                           # --graceful-timeout 2
    old = srv.worker_pids()[0]
    in_background(srv, LONG)
    time.sleep(1)
    os.kill(srv.proc.pid, signal.SIGHUP)    # the arbiter SIGTERMs the old worker
    assert wait_dead(old, 2 + MARGIN), srv.log()
    assert "section 'long' ran past the graceful timeout after SIGTERM" in srv.log()
    srv.wait_ready()


def test_sigterm_mid_section_stops_the_server(start):
    srv = start()
    in_background(srv, LONG)
    time.sleep(1)
    began = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(2 + MARGIN + 2)
    assert time.monotonic() - began < 2 + MARGIN + 2


def test_killing_the_arbiter_mid_section_leaves_no_orphan(start):
    srv = start()
    pid = srv.worker_pids()[0]
    in_background(srv, LONG)
    time.sleep(1)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(5)
    assert wait_dead(pid, 5), srv.log()
    assert re.search(r"the arbiter \(pid \d+\) is gone while a section is open", srv.log())
