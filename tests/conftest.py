import os

import pytest

from tests.apps import gil
from tests.gunicorn_server import Server

# The servers the tests start take this process's measure of the GIL holds' speed.
os.environ.setdefault(gil.GIL_RATE_VARIABLE, repr(gil.SECONDS_PER_ITEM))


def pytest_collection_modifyitems(items):
    """The tests marked ``slow`` (10 s or more) first: run in parallel, none starts last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Note on the test item whether it failed (``server`` shows its logs then)."""
    report = (yield).get_result()
    if report.failed:
        item.heartworker_failed = True


@pytest.fixture
def server(request, tmp_path):
    """Factory: ``server(timeout=2, env={...})`` starts a real Gunicorn; all are stopped at teardown.

    When the test fails, each server's log is printed at teardown (pytest shows it
    under "Captured stdout teardown"): an assertion that did not show it still
    leaves the server's side of the story in the report.
    """
    started = []

    def start(*, ready=True, **kwargs):
        srv = Server(tmp_path, **kwargs)
        started.append(srv)
        return srv.start(ready=ready)

    yield start
    errors = []
    for srv in started:
        try:
            srv.stop()
        except Exception as exc:      # (every server is stopped, whatever one of them does)
            errors.append(exc)
    if getattr(request.node, "heartworker_failed", False):
        for srv in started:
            if srv.proc is not None:      # (started: its log exists)
                print(f"--- the log of {srv.worker or srv.program} on port {srv.port} ---")
                print(srv.log())
    if errors:
        raise errors[0]


WORKERS = ["heartworker.SyncWorker",
           pytest.param("heartworker.GeventWorker", marks=pytest.mark.gevent)]


@pytest.fixture(params=WORKERS)
def each_worker(request, server):
    """Factory like ``server``, once per heartworker worker class."""
    if "Gevent" in request.param:
        pytest.importorskip("gevent")
    return lambda **kw: server(worker=request.param, **kw)


@pytest.fixture(params=WORKERS + ["heartworker.ThreadWorker"])
def every_worker(request, server):
    """Factory like ``each_worker``, the threaded worker too (with ``--threads 4``)."""
    if "Gevent" in request.param:
        pytest.importorskip("gevent")

    def start(**kw):
        if "Thread" in request.param:
            kw["args"] = ["--threads", "4", *kw.get("args", ())]
        return server(worker=request.param, **kw)
    return start


@pytest.fixture
def start(each_worker):
    """Factory: ``each_worker`` with ``--timeout 2`` (modules may define their own)."""
    return lambda **kw: each_worker(timeout=2, **kw)


@pytest.fixture
def gevent_server(server):
    pytest.importorskip("gevent")

    def start(**kwargs):
        kwargs.setdefault("worker", "heartworker.GeventWorker")
        return server(**kwargs)

    return start
