"""heartworker.SyncWorker against real Gunicorn processes (see gunicorn_server.py).

Bounds are generous on purpose: timing goals live in benchmarks/.
"""

import re
import time

import pytest

from tests.timing import in_background, killed, timed_get

TIMEOUT = 2
MARGIN = 3.0   # what "near" means in these tests




def test_long_request_in_a_section_survives_while_a_hang_outside_is_killed(server):
    srv = server(timeout=TIMEOUT, workers=2)
    t, results = in_background(srv, "/section?s=5&cap=30")
    time.sleep(0.3)
    status, took = timed_get(srv, "/hang")
    t.join()
    assert killed(status)
    assert TIMEOUT - 0.1 <= took < TIMEOUT + MARGIN
    long_status, long_took = results["/section?s=5&cap=30"]
    assert long_status == 200 and long_took >= 5
    assert srv.log().count("WORKER TIMEOUT") == 1


def test_hung_section_is_killed_at_its_cap_and_the_log_says_where(server):
    srv = server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/section_hang?cap=3&name=fetch%20upstream")
    assert killed(status)
    assert 3 <= took < 3 + MARGIN
    m = srv.wait_for_log(r"section 'fetch upstream' ran past its cap: ([\d.]+) s elapsed, cap 3 s")
    assert m, srv.log()
    assert 3 <= float(m.group(1)) < 3.5
    log = srv.log()
    assert re.search(r"\[CRITICAL\].*section 'fetch upstream'", log)
    assert "in stuck_in_section" in log, log
    assert "WORKER TIMEOUT" not in log, "the guard acts before the arbiter"
    srv.wait_ready()   # respawned


def test_a_section_in_a_background_thread_does_not_protect_the_request(server):
    srv = server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/bg_section_then_hang")
    assert killed(status)
    assert took < TIMEOUT + MARGIN
    assert "WORKER TIMEOUT" in srv.log()


def test_a_hang_after_a_section_ends_is_killed_at_timeout(server):
    srv = server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/section_then_hang?s=3&cap=30")
    assert killed(status)
    assert 3 + TIMEOUT - 0.1 <= took < 3 + TIMEOUT + MARGIN
    assert "WORKER TIMEOUT" in srv.log()


def test_nested_sections(server):
    srv = server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/nested?s=1.5&inner_s=1.5&outer=30&inner=10")
    assert status == 200 and took >= 4.5
    # The inner cap is the nearer deadline and is enforced.
    status, took = timed_get(srv, "/nested?s=0.2&inner_s=100&outer=30&inner=2")
    assert killed(status) and took < 0.2 + 2 + MARGIN
    assert srv.wait_for_log(r"section 'inner' ran past its cap: [\d.]+ s elapsed, cap 2 s")


def test_an_inner_section_never_outlives_its_enclosing_deadline(server):
    srv = server(timeout=TIMEOUT)
    status, took = timed_get(srv, "/nested?s=0.2&inner_s=100&outer=2.5&inner=60")
    assert killed(status) and took < 2.5 + MARGIN
    assert srv.wait_for_log(r"section 'inner' ran past the deadline of its enclosing section .outer. \(cap 2.5 s\)")


def test_exception_inside_a_section_leaves_the_worker_sound(server):
    srv = server(timeout=TIMEOUT)
    pid = srv.get("/pid").text
    assert srv.get("/error_in_section?cap=10").status_code == 500
    assert "boom inside a section" in srv.log()
    assert srv.get("/section?s=3&cap=10").status_code == 200, "sections still vouch"
    status, took = timed_get(srv, "/hang")
    assert killed(status) and took < TIMEOUT + MARGIN, "and nothing vouches outside them"
    assert srv.get("/pid").text != pid


def test_decorator_form(server):
    srv = server(timeout=TIMEOUT)
    r = srv.get("/decorated?s=4")
    assert r.status_code == 200 and r.content == b"decorated done"


def test_timeout_zero_still_enforces_caps(server):
    srv = server(timeout=0)
    assert srv.get("/section?s=2.5&cap=10").status_code == 200
    status, took = timed_get(srv, "/section_hang?cap=2")
    assert killed(status) and 2 <= took < 2 + MARGIN
    assert srv.wait_for_log(r"section 'stuck' ran past its cap")





@pytest.mark.parametrize("name,value", [
    ("HEARTWORKER_SECTION_CAP", "abc"), ("HEARTWORKER_SECTION_CAP", "0"),
    ("HEARTWORKER_STARTUP_CAP", "-5"), ("HEARTWORKER_STARTUP_CAP", "nan"),
    ("HEARTWORKER_SECTION_CAP", "inf"), ("HEARTWORKER_KEEP_CHILDREN", "maybe"),
    ("HEARTWORKER_KEEP_CHILDREN", "2"),
])
def test_invalid_settings_refuse_to_boot(server, name, value):
    srv = server(timeout=TIMEOUT, ready=False, env={name: value})
    code = srv.proc.wait(20)
    assert code != 0
    log = srv.log()
    assert f"invalid setting: {name}={value!r}" in log, log
    assert "Worker failed to boot" in log
    assert len(srv.worker_pids()) == 1, "no respawn loop"


def test_invalid_setting_from_gunicorn_raw_env(server):
    srv = server(timeout=TIMEOUT, ready=False, args=["-e", "HEARTWORKER_SECTION_CAP=-1"])
    assert srv.proc.wait(20) != 0
    assert "invalid setting: HEARTWORKER_SECTION_CAP='-1'" in srv.log()


def test_settings_from_gunicorn_raw_env_apply(server):
    srv = server(timeout=TIMEOUT, args=["-e", "HEARTWORKER_SECTION_CAP=2.5"])
    status, took = timed_get(srv, "/section_hang")
    assert killed(status) and took < 2.5 + MARGIN
    assert srv.wait_for_log(r"section 'stuck' ran past its cap: [\d.]+ s elapsed, cap 2.5 s")


def test_a_failed_guard_falls_back_to_stock_timeouts(server, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(
        "def post_worker_init(worker):\n"
        "    def broken(now):\n"
        "        raise RuntimeError('injected guard failure')\n"
        "    worker.guard.step = broken\n"
        "    worker.guard.ring()\n")
    srv = server(timeout=TIMEOUT, args=["-c", str(conf)])
    assert srv.wait_for_log("the guard thread failed")
    assert "injected guard failure" in srv.log()
    status, took = timed_get(srv, "/section_hang?cap=60")
    assert killed(status) and took < TIMEOUT + MARGIN
    assert "WORKER TIMEOUT" in srv.log()
