"""How the guard ends what ran out of time: a section cancelled, a worker retired or aborted.

A part of :class:`~heartworker.guard.Guard` (its state is the guard's).

* **Cancel**: log at CRITICAL (section, elapsed, cap, stack), then have
  :class:`~heartworker.SectionCapExceeded` raised inside the section's code, as
  the flavour says (``CANCEL_SIGNAL`` to the serving thread, a throw from the
  gevent hub, an asynchronous exception in a request thread).  The owner takes
  it where its code runs (:meth:`Endings.take_cancellation`): the signal's
  handler (``worker.handle_cancel``) raises only if the thread is running that
  section's code and no heartworker update is in progress.
* **Retire** (the threaded worker's backstop): the graceful stop SIGTERM makes,
  so that the worker's other requests finish.
* **Abort**: SIGABRT to the serving thread, as Gunicorn's arbiter would send it
  (the ``worker_abort`` hook runs); if the worker still lives ``ABORT_GRACE``
  seconds later, the process ends.
"""

import os
import re
import signal
import sys
from time import monotonic

from .stacks import format_stack

ABORT_GRACE = 1.0
CANCEL_SIGNAL = signal.SIGRTMIN + 6   # no other use in Gunicorn; real-time: never merged away


def metric_name(text):
    """``POST /export/**`` as a statsd name's part: ``POST_export``."""
    return "_".join(re.findall(r"[A-Za-z0-9]+", text)) or "root"


class Endings:
    """Cancel, retire, abort (a part of the guard)."""

    def cancel(self, section, message, frame, running):
        """Log, then have SectionCapExceeded raised in the section's code; the worker lives."""
        self.log.critical("%s; cancelling the %s (SectionCapExceeded; the worker lives "
                          "on). Its stack (most recent call last):\n%s", message, section.kind,
                          format_stack(frame))
        self.count("heartworker.cancel")
        route = section if section.kind == "route" else section.bound
        if route is not None and route.kind == "route":    # (nested in a route's section)
            self.count(f"heartworker.route.{metric_name(route.name)}.cancel")
        self.flavor.interrupt(self, section, running)

    def take_cancellation(self, owner, frame=None):
        """The message to raise in ``owner``'s code now, or None (called where it runs).

        ``frame``: where the owner runs now (the signal's handler, which has made
        sure no cancellation is being handled there).  The exception is raised for
        the innermost cancelled section the code is inside, and again on the next
        signal for as long as code goes on inside one: as with trio's cancel
        scopes, code that catches a cancellation cannot outlive the deadline.
        ``frame`` None: the owner is a waiting greenlet, whose exception state
        cannot be seen; it gets one exception for all its cancelled sections.
        """
        reg = self.registry
        pending = [s for _, s in list(self.overdue)
                   if s.owner is owner and s.why is not None and not s.closed
                   and (frame is None or reg.inside_section(frame, s))]
        if not pending:
            return None
        if frame is not None:
            return max(pending, key=lambda s: s.started).why
        if any(s.delivered for s in pending):
            return None
        now = monotonic()
        for section in pending:
            section.delivered = now   # (its grace counts from now: see step)
        return pending[0].why

    def signal_serving_thread(self):
        try:
            signal.pthread_kill(self.registry.tid, CANCEL_SIGNAL)
        except (OSError, ValueError):
            pass

    def count(self, metric):
        """Count an event in statsd, when Gunicorn's logger is its statsd logger."""
        increment = getattr(self.log, "increment", None)
        if increment is not None:
            increment(metric, 1)
        if self.publisher is not None and metric.count(".") == 1:   # (not a route's)
            self.publisher.count(metric.partition(".")[2])

    def escalate(self, message, frame, section):
        """The backstop: abort the worker (True), or retire it (the threaded worker)."""
        if self.flavor.retires:
            self.retire(message, frame)
            return False
        self.abort(message, frame, section)
        return True

    def retiring_vouch(self, now):
        """While the worker retires, it is alive: vouch for it up to the graceful stop's end."""
        if self.retiring and now < self.flavor.retiring_until:
            self.registry.vouch_now(now)

    def retire(self, message, frame):
        """The threaded worker's backstop: stop accepting, let the other requests end, exit.

        A request thread that a cancellation cannot end (blocked in a C call or a
        syscall, or swallowing it) cannot be ended from outside, and aborting the
        process would end its other requests too.  So the worker shuts down the
        way SIGTERM makes it (Gunicorn's graceful stop, bounded by
        ``--graceful-timeout``), then exits without waiting for the stuck thread
        (``ThreadWorker.run``); the arbiter starts a new one.
        """
        if self.retiring:
            return
        self.retiring = True
        if self.publisher is not None:
            self.publisher.changed()
        self.log.critical("%s; retiring worker (pid %s): it stops accepting, lets its other "
                          "requests finish (--graceful-timeout) and exits. Stack of the stuck "
                          "thread (most recent call last):\n%s", message, os.getpid(),
                          format_stack(frame))
        self.count("heartworker.retire")
        # The graceful stop begins within the main loop's next second (Gunicorn 23).
        self.flavor.retiring_until = monotonic() + self.graceful + 2.0
        try:
            signal.pthread_kill(self.registry.tid, signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def abort(self, message, frame, section=None):
        """Log, then abort the worker the way Gunicorn's arbiter would; never returns normally.

        ``section`` is the one it is aborted for, if any (its request is answered first).
        """
        self.aborting = True
        self.abort_section = section
        self.abort_cause = message.replace("heartworker: ", "", 1)
        # The serving thread may be busy in Python: without this, every write of the
        # log below would wait a 5 ms switch interval for the GIL.  The process is ending.
        sys.setswitchinterval(1e-4)
        self.log.critical("%s; aborting worker (pid %s). Its stack (most recent call "
                          "last):\n%s", message, os.getpid(), format_stack(frame))
        self.count("heartworker.abort")
        if self.publisher is not None:      # now: this guard looks no more
            self.publisher.write(self.publisher.state(self.registry, monotonic(), False),
                                 monotonic())
        if self.aftermath is not None:
            self.aftermath.disable_dump()   # the stack is logged already
        if signal.getsignal(signal.SIGABRT) in (signal.SIG_DFL, None):
            os._exit(1)         # before Gunicorn's handlers (post_fork): no core dump, no hook
        try:
            signal.pthread_kill(self.registry.tid, signal.SIGABRT)
        except (OSError, ValueError):
            pass
        end = monotonic() + ABORT_GRACE
        while monotonic() < end:        # a ring() must not cut the grace short
            self.sleep(end - monotonic())
        self.log.critical("heartworker: worker (pid %s) still alive %.1f s after SIGABRT; "
                          "exiting now", os.getpid(), ABORT_GRACE)
        os._exit(1)
