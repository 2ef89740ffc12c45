import pytest

from tests.gunicorn_server import Server


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


@pytest.fixture
def gevent_server(server):
    pytest.importorskip("gevent")

    def start(**kwargs):
        kwargs.setdefault("worker", "heartworker.GeventWorker")
        return server(**kwargs)

    return start
