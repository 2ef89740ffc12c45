"""When the arbiter, not the guard, ends a worker: what the log and the client say (issues 10, 14).

The guard acts at every deadline, so the arbiter's ``--timeout`` ends a worker
only when the guard cannot act in time: C code holds the GIL, or a cancelled
section runs on for longer than the arbiter's ``--timeout``.  The log must still
name the section, the setting to change, and the stacks, once.
"""

import os
import re
import signal
import time

from tests.timing import in_background, wait_dead

TIMEOUT = 1


def test_a_cancellation_outlived_by_the_arbiters_timeout_says_it_did_not_take(server):
    # A grace longer than --timeout: the sync worker's loop cannot notify while the
    # section swallows its cancellation and runs on, so the arbiter ends it first.
    srv = server(timeout=TIMEOUT, env={"HEARTWORKER_CANCEL_GRACE": "5"})
    assert "HEARTWORKER_CANCEL_GRACE=5 is longer than --timeout (1 s)" in srv.log()
    r = srv.get("/section_stubborn?cap=1")
    assert r.status_code == 504, r.text
    assert "section 'stubborn' ran past its cap" in r.text, r.text
    assert "the cancellation did not take" in r.text, r.text
    assert "ended the worker before HEARTWORKER_CANCEL_GRACE=5 was over" in r.text, r.text
    assert "held the GIL" not in r.text
    assert "WORKER TIMEOUT" in srv.log()


def test_a_startup_killed_with_the_gil_held_names_the_setting_and_counts(every_worker):
    # (A cap of 3 s: the hold must begin within it, after the imports, which took over
    # 1 s on a CI leg whose suite shared 2 cores with 11 other test processes.)
    srv = every_worker(timeout=TIMEOUT, ready=False,
                       env={"APP_STARTUP_GIL": "30", "HEARTWORKER_STARTUP_CAP": "3"})
    m = srv.wait_for_log(r"\[CRITICAL\] heartworker: worker \(pid \d+\) was killed during its "
                         r"startup, past its deadline, while no Python code could run \(C code "
                         r"held the GIL\) \(HEARTWORKER_STARTUP_CAP=3: raise it if the app "
                         r"legitimately takes longer to start\); the 2nd startup in a row past "
                         r"its cap", timeout=40)
    assert m, srv.log()
    log = srv.log()
    assert "the 1st startup in a row" in log
    assert re.search(r'File ".*gil\.py", line \d+ in hold_gil', log), log


def test_a_startup_killed_within_its_cap_names_what_else_may_have_ended_it(server):
    # Its stall limit ended it here: raising the startup cap would change nothing.
    srv = server(timeout=TIMEOUT, ready=False, env={
        "APP_STARTUP_GIL": "30", "HEARTWORKER_STARTUP_CAP": "900",
        "HEARTWORKER_STARTUP_STALL": "1"})
    assert srv.wait_for_log(r"was killed during its startup, past its deadline, while no "
                            r"Python code could run \(C code held the GIL\), [\d.]+ s after it "
                            r"began, within its cap \(HEARTWORKER_STARTUP_CAP=900\): past the "
                            r"deadline of a section opened in it or its stall limit "
                            r"\(HEARTWORKER_STARTUP_STALL=1\)", timeout=30), srv.log()
    assert "startup in a row" not in srv.log()


def test_the_launchers_setting_is_named_as_it_was_given(server):
    srv = server(program="heartworker", ready=False, args=["--startup-cap", "1"],
                 env={"APP_STARTUP_HANG": "1"})
    assert srv.wait_for_log(r"ran past its cap: [\d.]+ s elapsed, cap 1 s \(--startup-cap=1: "
                            r"raise it if the app legitimately takes longer to start\)",
                            timeout=20), srv.log()
    assert "HEARTWORKER_STARTUP_CAP" not in srv.log()


def test_an_abort_in_the_threaded_worker_logs_the_request_threads_stacks_once(server):
    # Gunicorn's handle_abort raises SystemExit in the main thread: no traceback shows
    # where the request threads were.  The arbiter sends SIGABRT when C code held the GIL
    # past --timeout; this test sends it by hand (no GIL hold: its timing is not
    # deterministic), so the cause it logs, the one for a silent loop, is not literally true.
    srv = server(worker="heartworker.ThreadWorker", timeout=2, args=["--threads", "2"])
    pid = int(srv.get("/pid").text)
    in_background(srv, "/section?s=30&cap=60")
    time.sleep(0.5)
    os.kill(pid, signal.SIGABRT)
    assert wait_dead(pid, 10)
    assert srv.wait_for_log(r"aborted by the arbiter: Gunicorn's main loop did not notify "
                            r"within --timeout \(2 s\)\. Its stacks when it got SIGABRT"), srv.log()
    log = srv.log()
    assert len(re.findall(r'File ".*app\.py", line \d+ in route', log)) == 1, log
    assert "no Python code could run" not in log and "suspended generator" not in log, log
