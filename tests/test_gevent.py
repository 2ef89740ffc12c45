"""heartworker.GeventWorker against real Gunicorn processes."""

import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.gunicorn_server import ROOT
from tests.timing import in_background, killed, timed_get

pytestmark = pytest.mark.gevent
TIMEOUT = 2
MARGIN = 3.0




def test_cpu_bound_section_longer_than_timeout_completes(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/section_busy?s=5&cap=30")
    assert status == 200 and took >= 5
    assert "WORKER TIMEOUT" not in srv.log()


def test_cpu_hog_outside_sections_is_killed_while_another_greenlet_waits_in_a_section(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    waiting, _ = in_background(srv, "/section?s=30&cap=60")
    time.sleep(0.5)
    status, took = timed_get(srv, "/busy?s=30")
    assert killed(status)
    assert took < TIMEOUT + MARGIN
    assert "WORKER TIMEOUT" in srv.log()
    waiting.join(10)


def test_a_waiting_greenlet_cancelled_while_another_blocks_the_hub_in_its_section_is_not_aborted(
        gevent_server):
    # The waiting greenlet's exception is thrown from the hub, which a CPU-bound greenlet
    # inside its own section keeps busy past the waiting one's grace: its grace had not
    # begun.  The worker was aborted, and with it the legitimate CPU-bound request
    # (found by benchmarks/soak.py).
    srv = gevent_server(timeout=TIMEOUT)
    pid = srv.get("/pid").text
    waiting, results = in_background(srv, "/section_hang?cap=1&name=upstream")
    time.sleep(0.3)
    status, took = timed_get(srv, "/section_busy?s=3&cap=10&name=inference")
    waiting.join(30)
    assert status == 200, srv.log()
    hung_status, hung_took = results["/section_hang?cap=1&name=upstream"]
    assert killed(hung_status) and hung_took < 3.3 + MARGIN, (hung_status, hung_took)
    assert srv.get("/pid").text == pid and "did not take" not in srv.log(), srv.log()


def test_a_waiting_greenlet_past_its_cap_is_cancelled_alone(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    pid = srv.get("/pid").text
    statuses = []
    stop = threading.Event()

    def keep_asking():
        while not stop.is_set():
            statuses.append(srv.get("/pid", timeout=5).text)
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        status, took = timed_get(srv, "/section_hang?cap=2&name=upstream")
    finally:
        time.sleep(0.5)
        stop.set()
        asker.join(10)
    assert killed(status) and 2 <= took < 2 + MARGIN
    assert len(statuses) > 20 and set(statuses) == {pid}, "the worker served on, unharmed"
    log = srv.log()
    assert "section 'upstream' ran past its cap" in log and "cancelling the section" in log
    assert "in stuck_in_section" in log
    assert srv.get("/section?s=3&cap=10").status_code == 200
    assert srv.get("/pid").text == pid and "WORKER TIMEOUT" not in srv.log()


def test_cap_with_the_hub_blocked_cancels_the_greenlet_with_the_stack(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    pid = srv.get("/pid").text
    status, took = timed_get(srv, "/section_busy?s=60&cap=2")
    assert status == 504 and 2 <= took < 2 + MARGIN
    assert srv.wait_for_log(r"section 'busy' ran past its cap: [\d.]+ s elapsed, cap 2 s; "
                            r"cancelling the section")
    assert "in busy_outside" in srv.log()
    assert srv.get("/pid").text == pid, "the greenlet that blocked the hub was cancelled alone"


def test_ten_thousand_concurrent_sections(gevent_server):
    srv = gevent_server(timeout=TIMEOUT, args=["--worker-connections", "20000"])
    r = srv.get("/fanout?n=10000&s=1", timeout=60)
    assert r.status_code == 200, r.text
    assert "WORKER TIMEOUT" not in srv.log()




NO_GEVENT = "import sys; sys.modules['gevent'] = None\n"


def test_heartworker_imports_without_gevent_and_says_what_is_missing():
    code = NO_GEVENT + (
        "import heartworker\n"
        "with heartworker.long_section('x'):\n    pass\n"
        "heartworker.SyncWorker\n"
        "try:\n    heartworker.GeventWorker\n"
        "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "heartworker.GeventWorker needs gevent: pip install 'heartworker[gevent]'" in out.stdout


def test_gunicorn_without_gevent_reports_the_missing_extra(server, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_GEVENT)
    srv = server(worker="heartworker.GeventWorker", ready=False,
                 env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert srv.proc.wait(20) != 0
    assert "pip install 'heartworker[gevent]'" in srv.log()


def test_a_greenlet_running_when_the_guard_aborts_for_another_says_the_worker_was_aborted(
        gevent_server):
    # The abort's SystemExit lands in whichever greenlet runs: nearly always the CPU-bound
    # one, within its cap (if the hub ran instead, its connection is closed, as stock: try
    # again).  Its 504 named the other greenlet's section as if it were its own (found by
    # benchmarks/soak.py).
    srv = gevent_server(timeout=TIMEOUT)
    for _ in range(3):
        stubborn, _ = in_background(srv, "/section_stubborn?cap=1")
        time.sleep(0.3)
        try:
            r = srv.get("/section_busy_yielding?s=8&cap=30&name=inference", timeout=30)
        except requests.ConnectionError:
            r = None
        stubborn.join(30)
        assert "aborting worker" in srv.log(), srv.log()
        if r is not None:
            break
        srv.wait_ready()
    assert r is not None, "three times the hub ran when the guard aborted"
    assert r.status_code == 504, (r.status_code, r.text)
    assert r.text.startswith("Gateway Timeout: the worker was aborted: section 'stubborn' "
                             "is still running"), r.text


def test_a_greenlet_that_swallows_its_cancellation_gets_the_worker_aborted(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/section_stubborn?cap=2")
    assert killed(status) and 3 <= took < 3 + MARGIN
    log = srv.log()
    assert "section 'stubborn' ran past its cap" in log and "cancelling the section" in log
    assert "although it was cancelled: the cancellation did not take" in log
    assert "aborting worker" in log
    srv.wait_ready()
