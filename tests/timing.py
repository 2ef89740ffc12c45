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
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True             # once seen dead: a dead pid never lives again


class StatsdListener:
    """A UDP socket on 127.0.0.1 for Gunicorn's ``--statsd-host``; closed by ``with``."""

    def __init__(self, timeout=10):
        import socket
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.args = ["--statsd-host", f"127.0.0.1:{self.sock.getsockname()[1]}"]
        self.packets = b""

    def wait_for(self, *wanted):
        """Receive until every one of ``wanted`` (bytes) was seen; return all packets."""
        import socket
        while not all(w in self.packets for w in wanted):
            try:
                self.packets += self.sock.recv(4096) + b"\n"
            except socket.timeout:
                missing = [w for w in wanted if w not in self.packets]
                raise AssertionError(f"statsd: no {missing} after {self.sock.gettimeout()} s; "
                                     f"received {self.packets!r}") from None
        return self.packets

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()
