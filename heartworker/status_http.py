"""The status service's HTTP server: a thread of the arbiter, fork-safe, hard to upset.

Started by the worker class's ``check_config``, which Gunicorn's arbiter calls in
its own process as it starts (``Arbiter.start``, before it spawns workers; once:
a HUP reload keeps the service), so it answers before any worker has loaded,
under plain ``gunicorn -k heartworker.X`` too.  (With ``--preload`` the arbiter
loads the app first: the service starts once it has.)

* **Fork-safe.** Its listening socket and every connection it has open are
  closed in any process the arbiter forks (``os.register_at_fork``): a worker
  never holds them, and its threads do not exist there.
* **Never in the arbiter's way.** It runs on threads of its own, reads files,
  and takes no lock the arbiter's loop takes.
* **Hard to upset.** HTTP/1.0, one request per connection; a request must
  arrive within ``READ_TIMEOUT`` seconds of silence and ``LONGEST`` in all; at
  most ``MAX_CONNECTIONS`` are open at once (a new one closes the oldest); a request line over 64 KiB is answered 414,
  headers over 64 KiB or 100 lines 431, garbage 400, a method but GET and HEAD
  405, another path 404 (``http.server`` does the parsing).  It serves only
  its GET paths and tells nothing of the environment, nor of requests beyond
  their method and path.
"""

import atexit
import http.client
import importlib.util
import json
import os
import socket
import stat
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

READ_TIMEOUT = 5.0      # seconds a connection may stay silent
MAX_HEAD = 65536        # bytes of request line and headers, in all
LONGEST = 10.0          # seconds a connection may stay open at all (a trickling client)
MAX_CONNECTIONS = 256
FOLD_EVERY = 10.0    # seconds between looks at the workers' files when nobody asks
RETRY_BIND = 1.0     # seconds between tries while a re-executed arbiter's port is taken


class _Capped:
    """The request's reader, ending the head at ``MAX_HEAD`` bytes in all (http.server
    bounds each line and the count of lines only: 100 lines of 64 KiB each)."""

    def __init__(self, rfile, left):
        self.rfile, self.left = rfile, left

    def readline(self, limit=-1):
        line = self.rfile.readline(limit)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"request head over {MAX_HEAD} bytes")
        return line

    def __getattr__(self, name):
        return getattr(self.rfile, name)


class Handler(BaseHTTPRequestHandler):
    server_version = "heartworker"
    default_request_version = "HTTP/1.0"    # (an error's status line, even for garbage)
    timeout = READ_TIMEOUT
    PATHS = ("/livez", "/readyz", "/startupz", "/status", "/metrics")

    def do_GET(self):
        self.answer(body=True)

    def do_HEAD(self):
        self.answer(body=False)

    def version_string(self):
        return self.server_version

    def parse_request(self):
        self.rfile = _Capped(self.rfile, MAX_HEAD - len(self.raw_requestline))
        return super().parse_request()      # (431 for a head over MAX_HEAD)

    def __getattr__(self, name):        # any other method: 405 (not http.server's 501)
        if name.startswith("do_"):
            return self.not_allowed
        raise AttributeError(name)

    def not_allowed(self):
        self.send(405, b"method not allowed: GET or HEAD\n", extra=[("Allow", "GET, HEAD")])

    def answer(self, body):
        url = urlsplit(self.path)
        if url.path not in self.PATHS:
            return self.send(404, b"not found: /livez /readyz /startupz /status /metrics\n",
                             body=body)
        verbose = "verbose" in parse_qs(url.query, keep_blank_values=True)
        status = self.server.status
        try:
            workers, totals = status.snapshot()
            if url.path == "/status":
                data = json.dumps(status.status(workers, totals), indent=1).encode() + b"\n"
                return self.send(200, data, "application/json", body=body)
            if url.path == "/metrics":
                return self.send(200, status.metrics(workers, totals),
                                 "text/plain; version=0.0.4; charset=utf-8", body=body)
            name = url.path[1:]
            checks = status.checks(name, workers)
        except Exception as exc:     # (a snapshot that fails is the service's 500, not its end)
            self.server.log.exception("heartworker: the status service failed to answer")
            return self.send(500, f"internal error: {type(exc).__name__}\n".encode(), body=body)
        ok = all(passed for _, passed, _ in checks)
        if ok and not verbose:
            text = "ok\n"
        else:
            lines = [f"[+]{check} ok" if passed else f"[-]{check} failed: {why}"
                     for check, passed, why in checks]
            text = "\n".join(lines) + f"\n{name} check {'passed' if ok else 'failed'}\n"
        self.send(200 if ok else 503, text.encode("utf-8"), body=body)

    def send(self, code, data, kind="text/plain; charset=utf-8", body=True, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for header in extra:
            self.send_header(*header)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format, *args):    # (probes every few seconds: not in the log)
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    """A threading server on a socket made by :func:`listen` (inet or unix)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock, status, log):
        super().__init__(sock.getsockname(), Handler)
        self.socket, self.status, self.log = sock, status, log
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.open = {}              # connection -> when it came (closed in a forked child)
        self.fold_at = 0.0

    def fileno(self):
        return self.socket.fileno()

    def get_request(self):
        conn, addr = self.socket.accept()
        return conn, addr or ("unix", 0)

    def verify_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            # Full: the connection open longest makes room (a probe is never locked out
            # for long by connections that say nothing).
            oldest = min(list(self.open.items()), key=lambda item: item[1], default=(None,))[0]
            if oldest is not None:
                try:
                    oldest.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if not self.slots.acquire(timeout=1.0):
                return False    # closed at once (shutdown_request)
        self.open[request] = time.monotonic()
        return True

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open.pop(request, None)
            self.slots.release()

    def service_actions(self):
        """(Between the serving loop's polls) cut off connections open too long; now and
        then, fold the files of workers that are gone (read or not, they never pile up)."""
        now = time.monotonic()
        if now >= self.fold_at:
            self.fold_at = now + FOLD_EVERY
            try:
                self.status.snapshot()
            except Exception:
                self.log.exception("heartworker: the status service failed to read the "
                                   "workers' states")
        too_old = now - LONGEST
        for request, came in list(self.open.items()):
            if came < too_old:
                try:
                    request.shutdown(socket.SHUT_RDWR)   # its thread's read ends at once
                except OSError:
                    pass

    def shutdown_request(self, request):
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()

    def handle_error(self, request, client_address):
        pass                    # a client that went away, a broken request: nothing to log

    def close_in_child(self):
        """In a process the arbiter forked: none of the service's sockets stay open.

        Each one's descriptor is made ``/dev/null`` (as ``children.py`` does): a
        ``close()`` would not release a connection whose handler holds a file made
        from it, and the socket objects, whose threads are gone here, may still be
        finalized later: they then close ``/dev/null``, never a descriptor reused
        by then.
        """
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for each in [self.socket, *list(self.open)]:
                try:
                    os.dup2(null, each.fileno(), inheritable=False)
                except OSError:
                    pass
        finally:
            os.close(null)


def listen(bind):
    """A listening socket for ``bind`` (settings.parse_bind's form); OSError if it cannot."""
    if bind[0] == "unix":
        path = bind[1]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(path):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise OSError(f"{path} exists and is not a socket")
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)     # someone serves there: do not take it
                    raise OSError(f"{path} is in use")
                except ConnectionRefusedError:
                    os.unlink(path)         # a stale socket of a server gone
                finally:
                    probe.close()
            sock.bind(path)
        except BaseException:
            sock.close()
            raise
    else:
        _, host, port = bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
    sock.listen(128)
    return sock


def shown(sock):
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"http://{host}:{name[1]}"


class Service:
    """The arbiter's status service: started once per arbiter process."""

    def __init__(self, bind, status, log, setting, replacing=False):
        self.bind, self.status, self.log, self.setting = bind, status, log, setting
        self.replacing = replacing   # an arbiter re-executed by USR2, beside the old one
        self.server = None
        self.pid = os.getpid()

    def start(self):
        """Bind and serve on a thread; SystemExit naming the setting if the address is taken
        (unless this arbiter was re-executed by USR2: then it waits for the old one's)."""
        try:
            sock = listen(self.bind)
        except OSError as exc:
            if not self.replacing:
                self.log.error("heartworker: %s: cannot serve the status service there (%s); "
                               "Gunicorn does not start.", self.setting, exc)
                sys.exit(1)
            self.log.warning("heartworker: %s is taken (%s), by the arbiter this one replaces "
                             "(USR2): the status service starts once it is free",
                             self.setting, exc)
            threading.Thread(target=self._bind_later, name="heartworker-status",
                             daemon=True).start()
            return
        self._serve(sock)

    def _bind_later(self):
        while True:
            time.sleep(RETRY_BIND)
            try:
                sock = listen(self.bind)
            except OSError:
                continue
            return self._serve(sock)

    def _serve(self, sock):
        self.server = _Server(sock, self.status, self.log)
        os.register_at_fork(after_in_child=self._forked)
        if self.bind[0] == "unix":
            atexit.register(self._remove, self.bind[1], os.stat(self.bind[1]).st_ino)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="heartworker-status", daemon=True).start()
        self.log.info("heartworker: status service at %s (/livez /readyz /startupz /status "
                      "/metrics)", shown(sock))

    def _remove(self, path, inode):
        """(At the arbiter's exit) remove its unix socket, if it is still the one it made."""
        try:
            if os.getpid() == self.pid and os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass

    def _forked(self):
        if self.server is not None and os.getpid() != self.pid:
            self.server.close_in_child()
            self.server = None


_services = {}     # arbiter pid -> its status service (one, whatever a HUP does)


def start_service(settings, given, cfg, log, caller):
    """Start the arbiter's status service, once per arbiter (``caller``: the frame of
    ``Arbiter.start``, which calls ``check_config``: the arbiter, for its workers)."""
    from gunicorn.arbiter import Arbiter

    from .aftermath import shared_dir
    from .settings import LIVEZ_FAILED_STARTUPS, STATUS_BIND, setting_name
    from .status import Status

    if os.getpid() in _services:
        return
    name = setting_name(STATUS_BIND, given)
    if importlib.util.find_spec("prometheus_client") is None:
        log.error("heartworker: %s needs prometheus_client (pip install "
                  "'heartworker[status]'); Gunicorn does not start.", name)
        sys.exit(1)
    arbiter = caller.f_locals.get("self")
    if isinstance(arbiter, Arbiter):
        workers, replacing = (lambda: list(arbiter.WORKERS)), arbiter.master_pid != 0
    else:
        workers, replacing = None, "GUNICORN_PID" in os.environ
    status = Status(shared_dir(cfg.worker_tmp_dir), settings.livez_failed_startups,
                    setting_name(LIVEZ_FAILED_STARTUPS, given), workers)
    service = _services[os.getpid()] = Service(settings.status_bind, status, log, name,
                                               replacing)
    service.start()
    status.mark()         # the workers publish from now on, whatever their settings say
