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
