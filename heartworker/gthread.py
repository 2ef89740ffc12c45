"""``heartworker.ThreadWorker``: Gunicorn's threaded worker with long sections, where a
hung request thread is finally found.

Gunicorn's gthread worker notifies the arbiter from its main loop every second,
whatever its request threads do, so a request thread that hangs is never timed
out (only a GIL-holding call, which stops the main loop too, is).  Here every
request is a deadline (``registry.Request``): ``--timeout`` after it was last
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

import ctypes
import logging
import os
import sys
import threading
from time import monotonic

from gunicorn.workers import gthread

from . import native
from .registry import INF, LOCK_WAIT
from .section import SectionCapExceeded
from .worker import HeartWorkerMixin

LOOP_EVERY = 2.0   # the main loop notifies at least every second: silent longer, it is stuck


def _async_raise(ident, exc_class):
    """Raise ``exc_class`` in thread ``ident`` at its next bytecode (None: withdraw it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), None if exc_class is None else ctypes.py_object(exc_class))


class RequestCancelled(SectionCapExceeded):
    """SectionCapExceeded as raised in a request thread.

    An asynchronous exception is raised by class, without arguments: its
    message is the one the guard left for the thread it lands in.
    """

    messages = {}     # thread ident -> the cancellation's message

    def __init__(self, *args):
        super().__init__(*(args or (self.messages.get(native.get_ident(), "cancelled"),)))


class ThreadFlavor:
    """Owners are request threads; the main loop proves itself alive by notifying."""

    owner = staticmethod(native.native_get_ident())
    retires = True    # the backstop retires the worker (see the module docstring)

    def __init__(self):
        self.local = threading.local()
        self.beat_at = monotonic()

    def loop_seen(self, now):
        beat_at = self.beat_at
        return beat_at if now - beat_at <= LOOP_EVERY else None

    @staticmethod
    def stock_would_kill(guard, section, now):
        """Stock gthread never ends a request thread (only a GIL-holding call, unseen here)."""
        return False

    def interrupt(self, guard, section, running):
        """Raise the cancellation in the section's thread, once, if it serves its request."""
        reg = guard.registry
        owner = section.owner
        with reg.region(LOCK_WAIT) as held:
            # In the region: no request can end (and withdraw it) between the look and the send.
            if not held or section.closed or section.delivered or owner not in reg.requests:
                return
            if reg.in_bookkeeping(sys._current_frames().get(owner)):
                return                      # the guard tries again in a few milliseconds
            RequestCancelled.messages[owner] = section.why
            _async_raise(owner, RequestCancelled)
            for _, each in guard.overdue:   # one exception per thread: it cannot be re-raised
                if each.owner == owner:     # while its handling cannot be seen from outside
                    each.delivered = True

    def request_context(self):
        """Where the current request's Gunicorn response is noted: its thread."""
        return self.local

    def frame_of(self, section):
        return sys._current_frames().get(section.owner)

    waiting_frame = frame_of


class ThreadWorker(HeartWorkerMixin, gthread.ThreadWorker):
    """``gunicorn -k heartworker.ThreadWorker --threads N``."""

    def make_flavor(self):
        return ThreadFlavor()

    def notify(self):
        if self.flavor is not None:
            self.flavor.beat_at = monotonic()
        super().notify()

    def handle_request(self, req, conn):
        reg = self.heart
        if reg is None:
            return super().handle_request(req, conn)
        request = reg.request_begins(f"{req.method} {req.path}", sys._getframe(),
                                     self.cfg.timeout or INF)
        try:
            return super().handle_request(req, conn)
        except SectionCapExceeded as exc:
            self.handle_error(req, conn.sock, conn.client, exc)   # the 504
            return False                                          # and close
        finally:
            self.request_over(request)

    def request_over(self, request):
        """No cancellation may reach this thread after its request: withdraw any in flight."""
        ident = request.owner
        while True:
            try:
                self.heart.request_done(request, lambda: _async_raise(ident, None))
                RequestCancelled.messages.pop(ident, None)
                return
            except SectionCapExceeded:
                continue    # sent just before the request ended, and raised right here

    def run(self):
        super().run()
        stuck = list(self.heart.requests.values()) if self.heart is not None else []
        if stuck:
            now = monotonic()
            self.log.warning("heartworker: worker (pid %s) exits with %d request(s) still "
                             "running in threads that cannot be ended: %s", os.getpid(),
                             len(stuck), ", ".join(f"{r.name} ({now - r.started:.1f} s)"
                                                   for r in stuck))
            logging.shutdown()
            os._exit(1)     # Python would wait for those threads forever at exit
