import time

import requests


def timed_get(srv, path, timeout=60):
    """GET ``path``; return (status or the exception's class name, seconds taken)."""
    start = time.monotonic()
    try:
        status = srv.get(path, timeout=timeout).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return status, time.monotonic() - start


def killed(status):
    """A request whose worker was killed: a 500 from the abort, or a dropped connection."""
    return status != 200


def in_background(srv, path, results=None, timeout=60):
    """Start GET ``path`` in a thread; its (status, seconds) lands in ``results[path]``."""
    import threading

    results = {} if results is None else results
    thread = threading.Thread(target=lambda: results.__setitem__(path, timed_get(srv, path, timeout)),
                              daemon=True)
    thread.start()
    return thread, results


def wait_dead(pid, timeout):
    """Wait up to ``timeout`` s for process ``pid`` to be gone; return whether it is."""
    from tests.gunicorn_server import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)
