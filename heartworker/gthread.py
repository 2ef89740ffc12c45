"""``heartworker.ThreadWorker``: Gunicorn's threaded worker with long sections, where a
hung request thread is finally found.

Gunicorn's gthread worker notifies the arbiter from its main loop every second,
whatever its request threads do, so a request thread that hangs is never timed
out (only a GIL-holding call, which stops the main loop too, is).  Here every
request is a deadline (``deadline.Request``): ``--timeout`` after it was last
outside every section, none while it is inside one (the section's deadline
applies).  The guard watches them with the sections' deadlines and, at a
deadline, ends that request alone: :class:`~heartworker.SectionCapExceeded` is
raised in its thread (``PyThreadState_SetAsyncExc``: it lands at the thread's
next bytecode, so Python code is interrupted, but a thread blocked in a
syscall or a C call gets it only when that call returns), the client gets a
``504``, and the other threads keep serving.

A thread that the exception does not end within ``HEARTWORKER_CANCEL_GRACE``
cannot be ended from outside, and aborting the process would end its other
requests too.  So the guard *retires* the worker: SIGTERM to its main thread,
Gunicorn's graceful stop (no more accepts, the other in-flight requests
finish within ``--graceful-timeout``), then :meth:`ThreadWorker.run` exits the
process without waiting for the stuck thread, and the arbiter starts a new
worker.  The log names the stuck request and shows its thread's stack.

Each request thread owns its sections, while it serves a request; a section
entered by any other thread (an app's own background thread) vouches for
nothing.  A GIL-holding call inside a section survives to the latest open
deadline of all threads (the standing vouch); outside sections the arbiter's
``--timeout`` applies as in stock.
"""

import sys
from time import monotonic

from gunicorn.workers import gthread

from .answer import answer_stream
from .deadline import INF
from .section import SectionCapExceeded
from .threads import RequestCancelled, ThreadFlavor, _async_raise, exit_past_threads
from .worker import HeartWorkerMixin


class ThreadWorker(HeartWorkerMixin, gthread.ThreadWorker):
    """``gunicorn -k heartworker.ThreadWorker --threads N``."""

    dump_all_threads = True     # (request threads hold the GIL, not the main one)
    request_limit_ends_first = False   # (its main loop notifies, whatever they do)

    def make_flavor(self):
        return ThreadFlavor()

    def notify(self):
        if self.flavor is not None:
            self.flavor.beat_at = monotonic()
        super().notify()

    def request_limit_of(self, settings):
        """Its request threads' limit: ``HEARTWORKER_REQUEST_TIMEOUT``, else ``--timeout``
        (their deadlines are set by handle_request, not by the mixin's serve)."""
        limit, name = super().request_limit_of(settings)
        self.thread_limit = limit or self.cfg.timeout or INF
        return None, name

    def handle_request(self, req, conn):
        reg = self.heart
        if reg is None:
            return super().handle_request(req, conn)
        request = reg.request_begins(f"{req.method} {req.path}", sys._getframe(),
                                     self.thread_limit)
        try:
            try:
                return super().handle_request(req, conn)
            except SectionCapExceeded as exc:
                self.handle_error(req, conn.sock, conn.client, exc)   # the 504
                return False                                          # and close
            finally:
                self.request_over(request)
        except SectionCapExceeded:      # sent as the app returned, raised just above
            self.request_over(request)
            return False

    def in_flight(self):
        """Requests being served: the request threads' (the status service shows it)."""
        return len(self.heart.requests) if self.heart is not None else 0

    def handle_http2_request(self, req, conn, h2_conn):
        """An HTTP/2 stream (Gunicorn 25+): a request like any other; its 504 is the stream's."""
        reg = self.heart
        if reg is None:
            return super().handle_http2_request(req, conn, h2_conn)
        request = reg.request_begins(f"{req.method} {req.path}", sys._getframe(),
                                     self.thread_limit)
        try:
            try:
                return super().handle_http2_request(req, conn, h2_conn)
            except SectionCapExceeded as exc:
                answer_stream(self.log, req, h2_conn, exc)
            finally:
                self.request_over(request)
        except SectionCapExceeded:
            self.request_over(request)

    def request_over(self, request):
        """No cancellation may reach this thread after its request: withdraw any in flight."""
        ident = request.owner
        while True:
            try:
                self.heart.request_done(request, lambda: _async_raise(ident, None))
                RequestCancelled.messages.pop(ident, None)
                self.flavor.forget(ident)
                return
            except SectionCapExceeded:
                continue    # sent just before the request ended, and raised right here

    def run(self):
        super().run()
        if self.heart is not None:
            exit_past_threads(self.log, [(r.name, r.started) for r in self.heart.requests.values()])
