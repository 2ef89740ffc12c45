"""``heartworker.GeventWorker``: Gunicorn's gevent worker with long sections.

Greenlets of the hub's thread own sections.  The guard (a real OS thread,
see ``guard.py``) keeps working while a greenlet blocks the hub, and it
knows which greenlet that is: ``sys._current_frames()`` shows the frame of
the greenlet running right now, and a section counts only while its entry
frame is on that stack.  Hence:

* a greenlet that hogs the hub outside every section gets the worker killed
  at ``--timeout`` even while other greenlets wait inside sections;
* a section whose deadline passes is cancelled alone, and every other
  connection keeps being served: :class:`~heartworker.SectionCapExceeded`
  is thrown into its greenlet if it waits (the hub is free), or raised by a
  signal handler where it runs if it blocks the hub.

The guard never calls ``GeventWorker.notify()`` (it may ``sys.exit``); it
learns whether the hub is free by posting a callback to the hub's loop
(``run_callback_threadsafe``) and seeing whether it ran.
"""

import os
import sys
from time import monotonic

import gevent
from greenlet import getcurrent
from gunicorn.workers import ggevent

from .answer import answer_stream, answer_timeout
from .flavor import SyncFlavor
from .origins import writing_response
from .probe import LoopProbe
from .section import SectionCapExceeded
from .stacks import format_stack
from .worker import HeartWorkerMixin

GEVENT = (os.path.dirname(gevent.__file__) + os.sep,)   # its sockets, between Gunicorn and
#                                                         the hub (``sending``)


class GeventFlavor(LoopProbe):
    """Owners are greenlets; the hub is probed (probe.py); a waiting section is cancelled
    alone."""

    owner = staticmethod(getcurrent)
    retires = False   # the backstop aborts the worker

    def __init__(self, hub):
        super().__init__()
        self.loop = hub.loop

    def post(self, callback, *args):
        self.loop.run_callback_threadsafe(callback, *args)

    # (``frame``, the main thread's, is the running greenlet's: as the sync worker's)
    running_inside = staticmethod(SyncFlavor.running_inside)

    # -- deadlines -------------------------------------------------------------
    @staticmethod
    def sending(request):
        """Is the request's greenlet in Gunicorn's own code (writing the response), through
        gevent's sockets?  Its frame: where it waits, or the serving thread's if it runs."""
        greenlet = request.owner
        frame = greenlet.gr_frame
        if frame is None and not greenlet.dead:
            frame = sys._current_frames().get(request.registry.tid)
        return writing_response(frame, through=GEVENT)

    def interrupt(self, guard, section, running):
        if running:                         # it blocks the hub: interrupt it where it runs
            guard.signal_serving_thread()
        else:
            self.post_cancel(section, self._cancel, guard, section.owner)

    @staticmethod
    def _cancel(guard, owner):              # runs in the hub
        if owner.dead or not guard.registry.interruptible(owner.gr_frame):
            return                          # (suspended mid-update: the guard tries again)
        why = guard.take_cancellation(owner)
        if why is not None:
            owner.throw(SectionCapExceeded(why))

    @staticmethod
    def request_context():
        """Where the current request's Gunicorn response is noted: its greenlet."""
        return getcurrent()

    def frame_of(self, section):
        """Where a waiting section's greenlet is suspended."""
        return section.owner.gr_frame

    def waiting_frame(self, section):
        """Where a section's greenlet waits (None if it is dead or not started)."""
        return getattr(section.owner, "gr_frame", None)

    frames_at_abort = staticmethod(SyncFlavor.frames_at_abort)   # (the hub-blocking greenlet)


class GeventWorker(HeartWorkerMixin, ggevent.GeventWorker):
    """``gunicorn -k heartworker.GeventWorker``."""

    main_greenlet = None
    logs_abort_stack = True      # (handle_abort below)
    request_limit_ends_first = False   # (a waiting greenlet leaves the hub free)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aborted_greenlets = {}      # greenlet -> the cause its request's 504 names

    def make_flavor(self):
        self.main_greenlet = getcurrent()   # runs init_process and then the serving loop
        return GeventFlavor(gevent.get_hub())

    def handle_request(self, listener_name, req, sock, addr):
        handled = super().handle_request(listener_name, req, sock, addr)
        if getcurrent() in self.aborted_greenlets:
            # Gunicorn's gevent worker swallowed the abort's SystemExit, raised in this
            # greenlet's request (see handle_abort): answer it.
            answer_timeout(self, req, sock, addr, self.aborted_greenlets[getcurrent()])
        return handled

    def handle_http2_request(self, listener_name, req, sock, addr, h2_conn):
        """An HTTP/2 stream (Gunicorn 25+): a cancellation's ``504`` is the stream's.
        (Gunicorn's async workers catch ``Exception`` per stream: a ``BaseException``
        such as ``SectionCapExceeded`` ended the whole connection, its other streams
        unanswered.)"""
        try:
            return super().handle_http2_request(listener_name, req, sock, addr, h2_conn)
        except SectionCapExceeded as exc:
            answer_stream(self.log, req, h2_conn, exc)

    def handle_abort(self, sig, frame):
        """Gunicorn's abort (``worker_abort`` hook, then exit 1), made to end the process.

        The handler runs in whichever greenlet holds the hub, often a request's,
        where Gunicorn's gevent worker swallows ``SystemExit``; the worker would
        then shut down gracefully instead of aborting.  So the exit is also raised,
        from the hub's next callbacks, in the greenlet of the section the guard
        aborts for (if it waits elsewhere) and then in the main greenlet, from
        where it ends the process as ``sys.exit`` should.  The request greenlets
        that get it first answer their clients (``504``, see ``answer.py``): the
        one it is aborted for, or that blocked the hub, with the cause; one that
        merely ran when the signal came (its section within its cap: a guard's
        abort) says that the worker was aborted, and why.
        """
        self.give_answer_time(monotonic())    # (before the log line: its lock may wait)
        if self.guard is None or not self.guard.aborting:
            # The arbiter's WORKER TIMEOUT.  Unlike the sync worker's, Gunicorn's gevent
            # worker logs no traceback for it: say where the hub was blocked.
            self.log.error("heartworker: aborted by the arbiter; the greenlet that was "
                           "running (most recent call last):\n%s", format_stack(frame))
        try:
            super().handle_abort(sig, frame)
        except SystemExit as exit_:
            loop = gevent.get_hub().loop
            section = self.guard.abort_section if self.guard is not None else None
            owner = section.owner if section is not None else None
            running = getcurrent()
            if owner is not None:
                self.aborted_greenlets.setdefault(owner, self.abort_cause)
            self.aborted_greenlets.setdefault(running, self.abort_cause if owner in (
                None, running) else f"the worker was aborted: {self.abort_cause}")
            for greenlet in dict.fromkeys((owner, self.main_greenlet)):   # in this order
                if greenlet is not None and greenlet is not getcurrent() and not greenlet.dead:
                    loop.run_callback(greenlet.throw, exit_)
            raise
