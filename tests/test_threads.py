"""heartworker.ThreadWorker (gthread), against real Gunicorn with --threads 4 (issue 11)."""

import time

import pytest

from tests.timing import in_background, killed, timed_get, wait_dead

TIMEOUT = 2
MARGIN = 3.0
GRACE = 1.0          # HEARTWORKER_CANCEL_GRACE's default
GRACEFUL = 2.0       # --graceful-timeout in tests/gunicorn_server.py


@pytest.fixture
def threaded(server):
    return lambda **kw: server(worker="heartworker.ThreadWorker", timeout=TIMEOUT,
                               args=["--threads", "4"] + kw.pop("args", []), **kw)


def test_a_long_section_in_a_request_thread_survives(threaded):
    srv = threaded()
    status, took = timed_get(srv, "/section?s=5&cap=30")
    assert status == 200 and took >= 5
    assert "WORKER TIMEOUT" not in srv.log() and "cancelling" not in srv.log()


def test_a_python_hang_outside_sections_is_ended_alone_with_a_504(threaded):
    srv = threaded()
    pid = srv.get("/pid").text
    thread, results = in_background(srv, "/section?s=4&cap=30")
    time.sleep(0.2)
    r = srv.get("/busy?s=60")
    assert r.status_code == 504 and "ran longer than --timeout (2 s) outside every section" in r.text
    thread.join(15)
    assert results["/section?s=4&cap=30"][0] == 200, "the other thread's section completed"
    assert srv.get("/pid").text == pid, "the worker lives"
    log = srv.log()
    assert "request 'GET /busy' ran longer than --timeout" in log and "busy_outside" in log


def test_stock_gthread_never_ends_that_request(server):
    # What the issue is about: stock gthread's main loop notifies whatever the threads do.
    srv = server(worker="gthread", timeout=TIMEOUT, args=["--threads", "4"])
    status, took = timed_get(srv, "/busy?s=5")
    assert status == 200 and took >= 5


def test_a_thread_blocked_in_a_syscall_retires_the_worker_gracefully(threaded):
    srv = threaded()
    pid = srv.get("/pid").text
    hung, hung_result = in_background(srv, "/hang")      # time.sleep: no bytecode runs
    time.sleep(0.3)
    other, other_result = in_background(srv, "/section?s=3&cap=30")
    other.join(20)
    assert other_result["/section?s=3&cap=30"][0] == 200, "in-flight requests finish"
    hung.join(20)
    status, took = hung_result["/hang"]
    assert killed(status) and took < TIMEOUT + GRACE + GRACEFUL + MARGIN, (status, took)
    assert wait_dead(int(pid), 10), "then the worker exits"
    srv.wait_ready()
    assert srv.get("/pid").text != pid, "and the arbiter replaces it"
    log = srv.log()
    assert "request 'GET /hang' is still running" in log and "retiring worker" in log
    assert "hang_outside" in log, "the stuck thread's stack"
    assert "exits with 1 request(s) still running" in log and "GET /hang" in log


def test_a_section_past_its_cap_is_cancelled_and_named(threaded):
    srv = threaded()
    pid = srv.get("/pid").text
    r = srv.get("/section_busy?s=60&cap=1&name=crunch")
    assert r.status_code == 504 and "section 'crunch' ran past its cap" in r.text
    assert srv.get("/pid").text == pid
    log = srv.log()
    assert "section 'crunch' ran past its cap" in log and "cancelling the section" in log
    assert "busy_outside" in log


def test_a_nested_section_past_its_enclosing_deadline_names_both(threaded):
    srv = threaded()
    pid = srv.get("/pid").text
    r = srv.get("/nested_busy?outer=1&inner=60&inner_s=60")
    assert r.status_code == 504, r.text
    assert "section 'inner' ran past the deadline of its enclosing section 'outer' (cap 1 s)" \
        in r.text and "cap 60 s" in r.text, r.text
    assert srv.get("/pid").text == pid


def test_an_ended_request_prints_its_stack_once_without_faulthandlers_block(threaded):
    srv = threaded()
    assert srv.get("/busy?s=60").status_code == 504
    log = srv.log()
    assert "Fatal Python error" not in log
    assert log.count("in busy_outside") == 1, log


def test_a_swallowed_cancellation_retires_the_worker(threaded):
    srv = threaded()
    pid = srv.get("/pid").text
    status, took = timed_get(srv, "/section_stubborn?cap=1")
    assert killed(status) and took < 1 + GRACE + GRACEFUL + MARGIN
    assert wait_dead(int(pid), 10)
    assert "the cancellation did not take" in srv.log() and "retiring worker" in srv.log()


def test_sections_of_a_background_thread_do_not_vouch(threaded):
    srv = threaded()
    r = srv.get("/bg_section_then_hang?then=busy")
    assert r.status_code == 504 and "outside every section" in r.text


def test_a_gil_holding_call_inside_a_section_survives_and_outside_is_killed(threaded):
    srv = threaded()
    assert srv.get("/section_gil?s=4&cap=30").status_code == 200
    # The section's vouch stands until the guard's next look (a quarter of --timeout):
    # a GIL hold begun before it keeps the guard from withdrawing it, and lives to the
    # section's deadline (found on a loaded CI leg).  Outside sections means after it.
    time.sleep(1.5)
    status, took = timed_get(srv, "/gil?s=30")
    assert killed(status) and took < TIMEOUT + 1 + MARGIN, "stock: the main loop is stuck too"


@pytest.mark.slow
def test_gil_holds_that_keep_the_main_loop_silent_do_not_withdraw_the_standing_vouch(threaded):
    # Each hold keeps the main loop from notifying for longer than LOOP_EVERY; the
    # guard, running first when the GIL comes free, took the loop for stuck and wrote
    # its last heartbeat, already past --timeout: the arbiter killed the worker inside
    # its section if it looked before the main loop's next notify (found by
    # benchmarks/soak.py, on Gunicorn 25).  That race is not forced here: the
    # deterministic check of the rule is test_units.py's
    # test_a_gil_hold_in_a_request_threads_section_that_silences_the_main_loop_keeps_the_vouch.
    # (The holds are CPU-sized: 9 s of CPU took over 60 s of wall time on a CI leg whose
    # suite shared 2 cores with 11 other test processes.  Two holds, and room.)
    srv = threaded()
    pid = srv.get("/pid").text
    status, took = timed_get(srv, "/section_gil_again?n=2&s=3&cap=300", timeout=240)
    assert status == 200, srv.log()
    assert srv.get("/pid").text == pid and "WORKER TIMEOUT" not in srv.log(), srv.log()


def test_a_request_that_reports_progress_in_a_stalled_section_is_ended(threaded):
    srv = threaded()
    status, took = timed_get(srv, "/progress?s=1&every=0.25&stall=1&cap=60&then=busy")
    assert status == 504 and took < 1 + 1 + MARGIN
    assert "made no progress for" in srv.log()


def test_sync_worker_with_threads_is_never_silently_stock(server):
    # Gunicorn runs its own gthread worker for any *SyncWorker class when --threads > 1.
    srv = server(worker="heartworker.SyncWorker", timeout=TIMEOUT, workers=2,
                 args=["--threads", "4"])
    assert srv.wait_for_log(r"(?s)(Gunicorn replaced -k heartworker\.SyncWorker with its stock "
                            r"gthread worker because --threads is 4.*){2}"), srv.log()
    assert "Use -k heartworker.ThreadWorker" in srv.log()


@pytest.mark.parametrize("path", ["/busy_logging?s=60", "/busy_with_a_condition?s=60"])
def test_a_cancellation_never_leaves_a_lock_of_the_standard_library_held(threaded, path):
    # Logging's handler locks and threading.Condition are taken in Python code: the
    # exception is sent only while the thread runs the app's own code.
    srv = threaded()
    pid = srv.get("/pid").text
    for _ in range(3):
        r = srv.get(path, timeout=15)
        assert r.status_code == 504, (r.status_code, r.text)
    assert srv.get("/condition_free", timeout=5).status_code == 200
    assert srv.get("/pid", timeout=5).text == pid and "retiring" not in srv.log()


@pytest.mark.slow
def test_retiring_lets_a_request_longer_than_timeout_finish(threaded):
    # --graceful-timeout longer than --timeout: the worker is still vouched for while it
    # waits for its other requests (Gunicorn 23's wait does not notify the arbiter).
    srv = threaded(args=["--graceful-timeout", "8"])
    hung, hung_result = in_background(srv, "/hang")
    time.sleep(0.3)
    other, other_result = in_background(srv, "/section?s=6&cap=30")
    other.join(30)
    assert other_result["/section?s=6&cap=30"][0] == 200, srv.log()
    hung.join(30)
    assert "retiring worker" in srv.log() and "WORKER TIMEOUT" not in srv.log()


def test_a_slow_client_is_not_cut_off(threaded):
    import socket
    srv = threaded()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big_body?mb=8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
            time.sleep(0.02)              # at most 3 MB/s: longer than --timeout
    log = srv.log()
    assert "retiring" not in log and "cancelling the request" not in log, log
    if "WORKER TIMEOUT" not in log:
        # (Gunicorn 27's own gthread worker is sometimes killed by its arbiter while a
        # slow client reads a big body, with or without heartworker: not ours to test.)
        assert got.startswith(b"HTTP/1.1 200") and len(got) > 8 * 1024 * 1024
