import pytest

from tests.gunicorn_server import Server


def pytest_collection_modifyitems(items):
    """The tests marked ``slow`` (10 s or more) first: run in parallel, none starts last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable


@pytest.fixture
def server(tmp_path):
    """Factory: ``server(timeout=2, env={...})`` starts a real Gunicorn; all are stopped at teardown."""
    started = []

    def start(*, ready=True, **kwargs):
        srv = Server(tmp_path, **kwargs)
        started.append(srv)
        return srv.start(ready=ready)

    yield start
    for srv in started:
        srv.stop()


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
