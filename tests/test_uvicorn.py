"""heartworker.UvicornWorker (an ASGI app, FastAPI) against real Gunicorn processes."""

import os
import re
import signal
import time

import pytest
import requests

from tests.timing import in_background, killed, timed_get

pytest.importorskip("uvicorn_worker", reason="heartworker[asgi] is not installed")

TIMEOUT = 2
MARGIN = 3.0
HOOK = "def worker_abort(worker):\n    worker.log.info('worker_abort hook ran')\n"


# The tests where the loop or the HTTP protocol makes a difference (how the loop starts
# and stops, accepts, and refuses a second response start) run on both; the others on
# uvloop and httptools (the tests install them), as most deployments run.
BOTH_LOOPS = pytest.mark.parametrize("asgi", ["heartworker.UvicornWorker",
                                              "heartworker.UvicornH11Worker"], indirect=True)


@pytest.fixture
def asgi(server, request):
    """A Gunicorn with a uvicorn worker (``heartworker.UvicornWorker`` unless the test is
    parametrized over both)."""
    worker = getattr(request, "param", "heartworker.UvicornWorker")

    def start(**kw):
        kw.setdefault("app", "tests.apps.asgi_app:app")
        kw.setdefault("timeout", TIMEOUT)
        return server(worker=worker, **kw)
    return start


# -- the startup: the app's lifespan ---------------------------------------------------
@BOTH_LOOPS
def test_a_lifespan_that_blocks_the_loop_past_timeout_survives_and_is_timed(asgi):
    srv = asgi(env={"APP_LIFESPAN_SLEEP": "5"})
    assert srv.get("/pid").status_code == 200
    log = srv.log()
    assert "WORKER TIMEOUT" not in log
    assert "heartworker: startup took 5." in log, log


def test_a_lifespan_holding_the_gil_past_timeout_survives(asgi):
    srv = asgi(env={"APP_LIFESPAN_GIL": "4"})
    assert srv.get("/pid").status_code == 200
    assert "WORKER TIMEOUT" not in srv.log()


def test_a_lifespan_in_phases_keeps_its_stall_limit_with_progress(asgi):
    srv = asgi(env={"APP_LIFESPAN_PHASES": "1.2,1.2,1.2,1.2",
                    "HEARTWORKER_STARTUP_STALL": "2"})
    assert srv.get("/pid").status_code == 200
    assert "WORKER TIMEOUT" not in srv.log() and "progress" not in srv.log(), srv.log()


@BOTH_LOOPS
def test_a_hung_lifespan_is_ended_at_the_startup_cap_naming_it_with_the_hook(asgi, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(HOOK)
    srv = asgi(ready=False, args=["-c", str(conf)],
               env={"APP_LIFESPAN_HANG": "1", "HEARTWORKER_STARTUP_CAP": "1.5"})
    assert srv.wait_for_log(r"section 'startup' ran past its cap[^\n]*HEARTWORKER_STARTUP_CAP"
                            r"=1\.5", timeout=15), srv.log()
    assert srv.wait_for_log("worker_abort hook ran"), srv.log()


def test_a_section_in_the_lifespan_past_its_cap_aborts_the_startup_naming_it(asgi, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(HOOK)
    srv = asgi(ready=False, args=["-c", str(conf)], env={"APP_LIFESPAN_SECTION_HANG": "1.5"})
    assert srv.wait_for_log(r"section 'warm cache' ran past its cap[^\n]*aborting worker",
                            timeout=15), srv.log()
    assert srv.wait_for_log("worker_abort hook ran"), srv.log()
    assert srv.wait_for_log(r"Worker \(pid:\d+\) exited with code 1"), srv.log()
    assert "Application startup complete" not in srv.log()   # (it never served)


# -- sections in async code ------------------------------------------------------------
@pytest.mark.parametrize("path", ["/section_await?s=4", "/section_block?s=4",
                                  "/section_busy?s=4", "/section_gil?s=4", "/decorated?s=4"])
def test_a_section_longer_than_timeout_completes(asgi, path):
    srv = asgi()
    pid = srv.get("/pid").text
    status, took = timed_get(srv, path + "&cap=30")
    assert status == 200 and took >= 4, (status, took, srv.log())
    assert srv.get("/pid").text == pid and "WORKER TIMEOUT" not in srv.log()


@BOTH_LOOPS
@pytest.mark.parametrize("path, name", [("/section_hang", "upstream"),
                                        ("/section_busy?s=30", "inference"),
                                        ("/section_block?s=30", "blocking load")])
def test_a_section_past_its_cap_is_cancelled_alone_with_a_504_naming_it(asgi, path, name):
    srv = asgi()
    pid = srv.get("/pid").text
    sep = "&" if "?" in path else "?"
    r = requests.get(srv.url(f"{path}{sep}cap=1"), timeout=30)
    assert r.status_code == 504, (r.status_code, srv.log())
    assert f"section '{name}' ran past its cap" in r.text
    assert r.headers.get("connection") == "close"
    assert srv.get("/pid").text == pid, srv.log()
    assert "did not take" not in srv.log() and "Exception in ASGI" not in srv.log()


def test_an_awaiting_section_is_cancelled_while_other_requests_are_served(asgi):
    srv = asgi()
    hung, results = in_background(srv, "/section_hang?cap=2")
    time.sleep(0.3)
    for _ in range(5):                     # the loop stays free meanwhile
        status, took = timed_get(srv, "/pid")
        assert status == 200 and took < 0.5
    hung.join(30)
    status, took = results["/section_hang?cap=2"]
    assert status == 504 and 1.9 <= took < 2 + MARGIN, (status, took)


@BOTH_LOOPS
def test_a_cancelled_section_whose_response_began_has_its_connection_closed(asgi):
    srv = asgi()
    pid = srv.get("/pid").text
    with pytest.raises(requests.RequestException):
        requests.get(srv.url("/stream_then_hang?cap=1"), timeout=30)
    assert srv.get("/pid").text == pid


# -- outside sections: as stock, with a 504 and the hook ---------------------------------
@BOTH_LOOPS
def test_blocking_the_loop_outside_sections_is_ended_at_timeout_with_a_504_and_the_hook(
        asgi, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(HOOK)
    srv = asgi(args=["-c", str(conf)])
    pid = srv.get("/pid").text
    start = time.monotonic()
    r = requests.get(srv.url("/block?s=30"), timeout=30)
    took = time.monotonic() - start
    assert r.status_code == 504 and "--timeout" in r.text, (r.status_code, r.text, srv.log())
    assert took < TIMEOUT + MARGIN
    assert srv.wait_for_log("worker_abort hook ran"), srv.log()
    assert srv.wait_for_log(r"Worker \(pid:%s\) exited with code 1" % pid), srv.log()
    srv.wait_ready()
    assert srv.get("/pid").text != pid


@BOTH_LOOPS
def test_an_abort_answers_every_awaiting_request_and_leaves_the_queued_ones(asgi):
    srv = asgi()
    pid = srv.get("/pid").text
    results = {}
    awaiting = ["/await?s=20", "/await?s=21", "/section_hang?cap=60"]
    threads = [in_background(srv, path, results)[0] for path in awaiting]
    time.sleep(0.5)
    threads.append(in_background(srv, "/block?s=30", results)[0])
    time.sleep(0.5)             # the loop is blocked: this one waits in the listen queue
    threads.append(in_background(srv, "/pid", results)[0])
    for thread in threads:
        thread.join(40)
    for path in awaiting:       # each answered as the aborted loop closes
        status, took = results[path]
        assert status == 504 and took < 1 + TIMEOUT + MARGIN, (path, status, took, srv.log())
    assert results["/block?s=30"][0] == 504, (results, srv.log())
    assert results["/pid"][0] == 200, (results, srv.log())   # by the next worker
    assert srv.log().count("the worker was aborted") == len(awaiting), srv.log()
    assert srv.get("/pid").text != pid


def test_awaiting_outside_sections_past_timeout_is_left_alone_as_in_stock(asgi):
    srv = asgi()
    status, took = timed_get(srv, "/await?s=4")
    assert status == 200 and took >= 4
    assert "WORKER TIMEOUT" not in srv.log()


def test_a_request_limit_cancels_an_await_outside_sections(asgi):
    srv = asgi(env={"HEARTWORKER_REQUEST_TIMEOUT": "1"})
    pid = srv.get("/pid").text
    r = requests.get(srv.url("/await?s=30"), timeout=30)
    assert r.status_code == 504 and "HEARTWORKER_REQUEST_TIMEOUT" in r.text, (r.text, srv.log())
    assert srv.get("/section_await?s=2&cap=10").status_code == 200   # inside: its own cap
    assert srv.get("/pid").text == pid


def test_a_route_cap_lets_a_blocking_request_finish_and_cuts_a_hang(asgi):
    srv = asgi(env={"HEARTWORKER_ROUTE_CAPS": "GET /block=10;/await=1"})
    pid = srv.get("/pid").text
    status, took = timed_get(srv, "/block?s=4")
    assert status == 200 and took >= 4, (status, srv.log())
    r = requests.get(srv.url("/await?s=30"), timeout=30)
    assert r.status_code == 504 and "route '/await'" in r.text, (r.text, srv.log())
    assert srv.get("/pid").text == pid and "WORKER TIMEOUT" not in srv.log()


def test_a_route_cap_holds_inside_the_request_limit(asgi):
    srv = asgi(env={"HEARTWORKER_ROUTE_CAPS": "GET /block=10",
                    "HEARTWORKER_REQUEST_TIMEOUT": "1"})
    status, took = timed_get(srv, "/block?s=3")
    assert status == 200 and took >= 3, (status, srv.log())
    r = requests.get(srv.url("/await?s=30"), timeout=30)
    assert r.status_code == 504 and "HEARTWORKER_REQUEST_TIMEOUT" in r.text, r.text


# -- the graceful stop -------------------------------------------------------------------
def sigterm_during(srv, path):
    """SIGTERM the worker 0.5 s into GET ``path``; return the request's (status, seconds)."""
    pid = int(srv.get("/pid").text)
    thread, results = in_background(srv, path)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    thread.join(30)
    return results[path]


def test_sigterm_ends_an_open_section_at_the_graceful_limit_with_a_504(asgi):
    srv = asgi()
    status, took = sigterm_during(srv, "/section_hang?cap=60")
    assert status == 504 and took < 0.5 + 2 + MARGIN, (status, took, srv.log())
    assert "graceful" in srv.log()


@BOTH_LOOPS
def test_sigterm_answers_a_request_that_uvicorns_drain_cancels(asgi):
    srv = asgi(args=["--graceful-timeout", "1"])    # (the drain ends before --timeout)
    status, took = sigterm_during(srv, "/await?s=60")
    assert status == 504 and took < 0.5 + 1 + MARGIN, (status, took, srv.log())
    assert "graceful stop ended it" in srv.log() and "Exception in ASGI" not in srv.log()


# -- FastAPI -----------------------------------------------------------------------------
def test_fastapi_a_phased_lifespan_a_decorated_endpoint_and_a_capped_one(asgi):
    pytest.importorskip("fastapi")
    srv = asgi(app="tests.apps.fastapi_app:app", ready_path="/pid")
    assert "WORKER TIMEOUT" not in srv.log()
    r = srv.get("/predict?seconds=3&label=cat")     # FastAPI read the decorated signature
    assert r.status_code == 200 and r.json() == {"label": "cat", "seconds": 3.0}, r.text
    r = srv.get("/hang")
    assert r.status_code == 504 and "section 'upstream' ran past its cap" in r.text, r.text
    assert srv.get("/predict?seconds=0").status_code == 200
    assert srv.get("/predict").status_code == 422    # (its own validation, as always)


@BOTH_LOOPS
def test_fastapi_a_lifespan_aborted_at_its_cap_is_restarted_not_a_failed_boot(asgi):
    pytest.importorskip("fastapi")
    # Starlette reports the abort's SystemExit as a failed startup: uvicorn would exit
    # with Gunicorn's boot-error code, and the arbiter halt.
    srv = asgi(app="tests.apps.fastapi_app:app", ready_path="/pid",
               env={"APP_LIFESPAN_BLOCK_ONCE": "60", "HEARTWORKER_STARTUP_CAP": "4"})
    log = srv.log()     # (the next worker loads in 2.4 s)
    assert re.search(r"Worker \(pid:\d+\) exited with code 1", log), log
    assert "HEARTWORKER_STARTUP_CAP=4" in log and "Worker failed to boot" not in log, log


@BOTH_LOOPS
def test_fastapi_under_http_middleware_a_section_past_its_cap_gets_its_504(asgi):
    pytest.importorskip("fastapi")
    srv = asgi(app="tests.apps.fastapi_app:app", ready_path="/pid",
               env={"APP_HTTP_MIDDLEWARE": "1"})
    r = srv.get("/hang")    # (Starlette adds its "No response returned" beside it)
    assert r.status_code == 504 and "section 'upstream' ran past its cap" in r.text, r.text
    assert "Exception in ASGI application" not in srv.log()


# -- def endpoints: Starlette's thread pool (lent.py) ------------------------------------
def starlette(asgi, **kw):
    """A server of tests/apps/starlette_app.py (its def endpoints run in the thread pool)."""
    pytest.importorskip("starlette")
    return asgi(app="tests.apps.starlette_app:app", **kw)


def test_a_def_endpoint_past_its_sections_cap_is_ended_in_its_thread_the_worker_lives(asgi):
    pytest.importorskip("fastapi")
    srv = asgi(app="tests.apps.fastapi_app:app", ready_path="/pid")
    pid = srv.get("/pid").json()["pid"]
    status, took = timed_get(srv, "/report_busy?seconds=60&cap=1")
    assert status == 504 and took < 1 + MARGIN, (status, took, srv.log())
    assert "section 'report' ran past its cap" in srv.log(), srv.log()
    r = srv.get("/export?seconds=60")                 # @long_section on a def endpoint
    assert r.status_code == 504 and "section 'export' ran past its cap" in r.text, r.text
    assert srv.get("/export?seconds=0").json() == {"seconds": 0.0}   # (its signature)
    assert srv.get("/pid").json()["pid"] == pid and "WORKER TIMEOUT" not in srv.log()


def test_a_def_endpoint_blocked_in_a_syscall_past_its_cap_gets_the_worker_aborted(asgi,
                                                                                 tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(HOOK)
    srv = starlette(asgi, args=["-c", str(conf)])
    pid = srv.get("/pid").json()["pid"]
    status, took = timed_get(srv, "/report?seconds=60&cap=1")   # the exception waits
    assert status == 504 and took < 1 + 1 + MARGIN, (status, took, srv.log())  # cap, grace
    assert srv.wait_for_log("worker_abort hook ran"), srv.log()
    log = srv.log()
    assert re.search(r"section 'report' is still running[^\n]*did not take", log), log
    assert srv.get("/pid").json()["pid"] != pid


def test_a_def_endpoint_holding_the_gil_in_its_section_past_timeout_survives(asgi):
    srv = starlette(asgi)
    pid = srv.get("/pid").json()["pid"]
    r = srv.get("/report_gil?seconds=4")        # the loop cannot notify meanwhile
    assert r.status_code == 200, (r.status_code, srv.log())
    assert srv.get("/pid").json()["pid"] == pid and "WORKER TIMEOUT" not in srv.log()


def test_a_def_endpoint_holding_the_gil_past_its_sections_cap_is_killed_by_cap_and_timeout(asgi):
    # Nothing can run while C code holds the GIL: the standing vouch ends at the cap, and
    # the arbiter kills at cap + --timeout (+ its 1 s rounds), long before the hold ends.
    srv = starlette(asgi)
    pid = srv.get("/pid").json()["pid"]
    status, took = timed_get(srv, "/report_gil?seconds=20&cap=1")
    assert killed(status) and took < 1 + TIMEOUT + 2 + MARGIN, (status, took, srv.log())
    srv.wait_ready()
    assert srv.get("/pid").json()["pid"] != pid


def test_a_def_endpoint_holding_the_gil_outside_sections_is_killed_as_in_stock(asgi):
    srv = starlette(asgi)
    pid = srv.get("/pid").json()["pid"]
    with pytest.raises(requests.RequestException):
        srv.get("/report_gil_outside?seconds=8")
    assert srv.wait_for_log("WORKER TIMEOUT"), srv.log()
    assert srv.get("/pid").json()["pid"] != pid


def test_a_loop_blocked_outside_sections_is_killed_while_a_thread_sleeps_in_one(asgi):
    srv = starlette(asgi)
    pid = srv.get("/pid").json()["pid"]
    in_background(srv, "/report?seconds=25&cap=28")         # asleep in its section
    time.sleep(0.5)
    status, took = timed_get(srv, "/block?seconds=30")      # a task blocks the loop
    assert killed(status) and took < TIMEOUT + MARGIN, (status, took, srv.log())
    srv.wait_ready()
    assert srv.get("/pid").json()["pid"] != pid


def test_a_def_endpoints_own_event_loop_is_not_lent_its_sections_vouch_for_nothing(asgi):
    srv = starlette(asgi)
    pid = srv.get("/pid").json()["pid"]
    status, took = timed_get(srv, "/foreign?seconds=2&cap=0.5")
    assert status == 200, (status, took, srv.log())
    assert srv.get("/pid").json()["pid"] == pid and "foreign" not in srv.log()


def test_a_thread_pool_threads_section_keeps_its_requests_limit_away(asgi):
    srv = starlette(asgi, env={"HEARTWORKER_REQUEST_TIMEOUT": "1.5"})
    status, took = timed_get(srv, "/report_busy?seconds=3")     # in its section
    assert status == 200, (status, took, srv.log())
    status, took = timed_get(srv, "/two_threads?first=0.5&second=3")   # one ends first
    assert status == 200, (status, took, srv.log())
    status, took = timed_get(srv, "/task_and_thread?seconds=3")        # the task's first
    assert status == 200, (status, took, srv.log())
    status, took = timed_get(srv, "/plain?seconds=30")           # outside every section
    assert status == 504 and took < 1.5 + MARGIN, (status, took, srv.log())


def test_progress_from_the_thread_pool_counts_for_the_awaiting_tasks_section(asgi):
    srv = starlette(asgi)
    r = srv.get("/pipeline?steps=4")         # 3.2 s, a step each 0.8 s, stall 1.5
    assert r.status_code == 200 and r.json() == {"steps": 4}, (r.text, srv.log())
    r = srv.get("/pipeline?steps=4&quiet=1")
    assert r.status_code == 504 and "stall" in r.text, r.text
    # A thread still registered for a section left open (a suspended generator): its
    # progress is for the task it works for now (anyio reuses its idle threads).
    assert srv.get("/leave_open").status_code == 200
    r = srv.get("/pipeline?steps=4")
    assert r.status_code == 200, (r.text, srv.log())
    r = srv.get("/pipelines?steps=4&n=2")    # each in a task of its own, not the request's
    assert r.status_code == 200, (r.text, srv.log())


def test_progress_from_the_thread_pool_counts_for_an_endpoint_task_under_middleware(asgi):
    srv = starlette(asgi, env={"APP_HTTP_MIDDLEWARE": "1"})
    r = srv.get("/pipeline?steps=4")         # the endpoint's task is not the request's
    assert r.status_code == 200, (r.text, srv.log())


def test_progress_from_the_thread_pool_counts_for_a_lifespan_section(asgi):
    srv = starlette(asgi, env={"APP_LIFESPAN_STEPS": "4"})     # 3.2 s, stall 1.5
    log = srv.log()
    assert "stall" not in log and "aborting" not in log and "no longer counts" not in log, log


def test_a_lifespan_loading_in_the_thread_pool_beats_the_startup_stall(asgi):
    # 4.5 s in three phases, more than the stall limit; the first one ends within it
    # unless the imports before it take over 2.5 s.
    srv = starlette(asgi, env={"APP_LIFESPAN_PHASE": "1.5", "HEARTWORKER_STARTUP_STALL": "4"})
    log = srv.log()
    assert "stall" not in log and "WORKER TIMEOUT" not in log, log
    assert re.search(r"heartworker: startup took [4-9]\.", log), log
