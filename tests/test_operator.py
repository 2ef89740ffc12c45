"""What operators see, against real Gunicorn, in both workers (issue 14)."""

import os
import re
import signal
import time

import pytest

from tests.test_cancel import assert_truncated_stream, raw_get
from tests.timing import in_background, killed, timed_get

TIMEOUT = 2
MARGIN = 3.0


def test_a_startup_past_its_cap_names_the_setting_and_counts_the_restarts(start):
    srv = start(ready=False, env={"APP_STARTUP_HANG": "1", "HEARTWORKER_STARTUP_CAP": "1"})
    m = srv.wait_for_log(r"section 'startup' ran past its cap: [\d.]+ s elapsed, cap 1 s "
                         r"\(HEARTWORKER_STARTUP_CAP=1: raise it if the app legitimately takes "
                         r"longer to start\); the 3rd startup in a row past its cap", timeout=20)
    assert m, srv.log()
    assert "the 1st startup in a row" in srv.log() and "the 2nd startup in a row" in srv.log()


def test_a_startup_that_completes_resets_the_count(start, tmp_path):
    flag = tmp_path / "hang"
    flag.write_text("")
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import os, time\n"
        f"FLAG = {str(flag)!r}\n"
        "def post_worker_init(worker):\n"
        "    while os.path.exists(FLAG):\n"
        "        time.sleep(0.1)\n")
    srv = start(ready=False, env={"HEARTWORKER_STARTUP_CAP": "1"}, args=["-c", str(conf)])
    assert srv.wait_for_log("the 2nd startup in a row", timeout=20), srv.log()
    flag.unlink()
    srv.wait_ready()
    os.kill(srv.proc.pid, signal.SIGHUP)           # new workers: their startups complete
    time.sleep(2)
    flag.write_text("")
    os.kill(srv.proc.pid, signal.SIGHUP)           # and the next ones hang again
    assert srv.wait_for_log(r"the 1st startup in a row[\s\S]*the 2nd[\s\S]*"
                            r"the 1st startup in a row", timeout=20), srv.log()


def test_stacks_of_a_gil_held_kill_land_in_the_current_log_after_usr1(every_worker, tmp_path):
    log_path = tmp_path / "error.log"
    srv = every_worker(timeout=TIMEOUT, args=["--error-logfile", str(log_path)])
    in_background(srv, "/section_sleep_then_gil?s=1.5&gil=30&cap=2")
    time.sleep(0.5)
    rotated = tmp_path / "error.log.1"
    os.rename(log_path, rotated)
    os.kill(srv.proc.pid, signal.SIGUSR1)          # logrotate's postrotate
    deadline = time.monotonic() + 2 + TIMEOUT + MARGIN + 5
    while time.monotonic() < deadline:
        current = log_path.read_text() if log_path.exists() else ""
        if "hold_gil" in current:
            break
        time.sleep(0.1)
    assert "was killed while no Python code could run" in current, current
    assert re.search(r'File ".*gil\.py", line \d+ in hold_gil', current), current
    assert "hold_gil" not in rotated.read_text()


def test_an_ordinary_timeout_kill_prints_the_stack_once_and_readably(start):
    srv = start()
    # (Under gevent a request that waits is never timed out: block the hub instead.)
    path, where = ("/busy?s=20", "in busy_outside") if "Gevent" in srv.worker \
        else ("/hang", "in hang_outside")
    status, _ = timed_get(srv, path)
    assert killed(status)
    srv.wait_ready()
    assert srv.wait_for_log(where, timeout=5), srv.log()
    log = srv.log()
    assert "Fatal Python error" not in log, log
    assert log.count(where) == 1, log


def test_a_gil_held_kill_prints_the_stack_once_through_gunicorns_logger(every_worker):
    srv = every_worker(timeout=TIMEOUT)
    status, _ = timed_get(srv, "/gil?s=20")
    assert killed(status)
    assert srv.wait_for_log(r"\[ERROR\] heartworker: worker \(pid \d+\) was killed while no "
                            r"Python code could run"), srv.log()
    log = srv.log()
    assert "Fatal Python error" not in log
    assert len(re.findall(r"line \d+ in hold_gil", log)) == 1, log


# -- the client's answer to each ending (docs/operating.md: "What the log and the client show") --
@pytest.mark.slow
def test_sync_answers_an_ended_request_with_504_or_a_truncated_stream(server):
    srv = server(timeout=TIMEOUT)
    assert srv.get("/hang").status_code == 504
    assert srv.get("/section_hang?cap=2").status_code == 504
    # The response had started: one status line (its 200), the body cut off, no 504 after it.
    assert_truncated_stream(raw_get(srv, "/stream_then_hang", timeout=30))
    assert raw_get(srv, "/gil?s=20", timeout=30) == b""   # killed with the GIL held: no answer


@pytest.mark.slow
def test_gevent_never_ends_a_request_that_waits_outside_sections(gevent_server):
    srv = gevent_server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/sleep?s=5")
    assert status == 200 and took >= 5, "stock gevent: waiting is not a timeout"
    assert srv.get("/section_hang?cap=2").status_code == 504    # a cancelled section
    assert srv.get("/busy?s=20").status_code == 504             # the hub blocked: aborted
    assert srv.wait_for_log(r"aborted by the arbiter; the greenlet that was running[\s\S]*"
                            r"in busy_outside"), srv.log()
