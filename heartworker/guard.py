"""The guard: one real OS thread per worker that enforces deadlines and applies the rule.

It does little, like gevent's ``_monitor.py``: it sleeps until the earliest
section deadline (so it acts within milliseconds of a cap, not on a coarse
tick) or, while any section is open, for ``tick`` seconds at most.  Each time
it wakes it

1. aborts the worker if the arbiter is gone (an orphan must not live on);
2. acts on every section whose deadline has passed: it *cancels* the section
   (below), or aborts the worker for a section opened with ``cancel=False``;
3. aborts the worker if a cancelled section is still running ``grace``
   seconds later (the backstop: C code holding the GIL, a swallowed
   exception, a C call that does not return on a signal);
4. applies :func:`heartworker.vouching.vouch` to what it sees the serving
   thread doing.

Which sections are due, and which of them still run, is ``due.py``; how it
ends what ran out of time is ``endings.py``: a section is *cancelled*
(:class:`~heartworker.SectionCapExceeded` raised inside its code, as the flavour
says; the guard interrupts it again every ``RESEND`` seconds while it runs
on), and the worker is *aborted* (SIGABRT, as the arbiter sends it) when a
cancellation does not take.  If the guard itself fails, it logs why and the
worker falls back to stock Gunicorn behaviour.
"""

import os
import signal
import sys
from time import monotonic

from . import native
from .deadline import INF
from .due import RESEND, Due
from .endings import Endings
from .messages import Messages
from .regions import LOCK_WAIT
from .settings import CANCEL_GRACE

STOP_LOOK = 0.01   # seconds between looks at an abort while the exiting worker waits
IDLE_TICK = 1.0
LONGEST_WAIT = 3600.0


class Guard(Due, Endings, Messages):
    def __init__(self, registry, flavor, *, tick, ppid, log, grace=1.0, grace_name=CANCEL_GRACE,
                 aftermath=None, watch=None, graceful=30.0):
        self.registry = registry
        self.flavor = flavor
        self.tick = tick
        self.ppid = ppid
        self.log = log
        self.aftermath = aftermath
        self.watch = watch         # report lines, process title, saved count (report.py)
        self.startup = None        # the startup section, while it is open
        self.startup_note = None   # (setting, value) -> what a startup past it adds to the log
        self.grace = grace         # from a cancellation to the abort (HEARTWORKER_CANCEL_GRACE)
        self.grace_name = grace_name   # how the log names it (settings.setting_name)
        self.graceful = graceful   # --graceful-timeout
        self.overdue = []          # [(escalate_at, Section)] being cancelled
        self.abort_cause = None    # what the worker's 504 says when the guard aborts
        self.abort_section = None  # the section it aborts for, if any
        self._bell = native.allocate_lock()
        self._bell.acquire()
        self._ended = native.allocate_lock()   # held while the thread runs
        self.stopped = False
        self.publisher = None      # the worker's status file, if a status service reads it
        self.aborting = False
        self.retiring = False
        self.frozen = False
        registry.ring = self.ring

    def start(self):
        self._ended.acquire()
        try:
            native.start_new_thread(self._main)
        except BaseException:
            self._ended.release()
            raise

    def stop(self, wait):
        """The worker exits: end the thread, after the look it is in, if any (``wait``
        seconds at most).  Under gevent, the log handlers' locks are gevent's: the
        exiting worker's last lines wait for one held by the guard (a line at the
        graceful limit, logged as Gunicorn's stop ends) by switching to a hub that
        has nothing left to do, and get ``LoopExit`` instead.

        Never while the guard aborts the worker: it waits for this very exit (the
        abort's answer to its client is the exiting worker's to write).  Then no
        vouch stands: an exit that hangs (a thread Python waits for) is the
        arbiter's to end at ``--timeout``, as in stock, not at a section's
        deadline (the guard would have withdrawn a vouch whose code no longer runs).
        """
        self.stopped = True
        self.ring()
        end = monotonic() + wait
        while not self.aborting:
            left = end - monotonic()
            if left <= 0:
                break
            if self._ended.acquire(True, min(STOP_LOOK, left)):
                self._ended.release()
                break
        if not self.aborting and self.registry.enabled:
            self.registry.disable(monotonic())

    def ring(self):
        """Wake the guard now (a nearer deadline appeared)."""
        try:
            self._bell.release()
        except RuntimeError:   # already rung
            pass

    def sleep(self, seconds):
        if seconds > 0:
            self._bell.acquire(True, min(seconds, LONGEST_WAIT))

    # -- the thread ----------------------------------------------------------
    def _main(self):
        try:
            # Signals are for the serving thread: keep the process's signals off this one.
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            while True:
                self.sleep(self.registry.next_wake - monotonic())
                if self.aborting or self.stopped or not self.registry.enabled:
                    return      # aborted (by the arbiter too: registry.aborting), or the
                    #             worker exits: nothing to guard
                self.step(monotonic())
                publisher = self.publisher
                if publisher is not None and publisher.due(monotonic()):
                    self.publish(publisher, monotonic())
        except BaseException:
            self.fail()
        finally:
            self._ended.release()

    def publish(self, publisher, now):
        """Write the worker's status for the arbiter's status service (publish.py).

        Never the guard's end: a state that cannot be made is logged once, and the
        worker publishes no more (the service shows it as it last was)."""
        reg = self.registry
        try:
            with reg.region(self.lock_wait()) as held:
                state = publisher.state(reg, now, held)
            publisher.write(state, now)
        except Exception:
            self.publisher = None
            self.log.exception("heartworker: the worker's status cannot be published; the "
                               "status service shows it as it last was")

    def fail(self):
        try:
            self.registry.disable()
        finally:
            self.log.exception("heartworker: the guard thread failed; this worker falls "
                               "back to stock Gunicorn timeouts (sections no longer vouch)")

    def step(self, now):
        """One look: act on the deadlines that passed, escalate the cancellations that
        outlived their grace, apply the vouching rule, and set when to look next."""
        due, earliest, look_at, is_open = self.look(now)
        if not is_open:
            self.idle(now)
            return
        reg = self.registry
        if reg.open and os.getppid() != self.ppid:
            self.abort(f"the arbiter (pid {self.ppid}) is gone while a section is open",
                       self.current_frame())
            return
        frame = self.current_frame()
        undelivered = self.resend(frame)
        aborted, cancelled = self.act_on_due(due, frame, now)
        if aborted or self.escalate_overdue(frame, now):
            return
        self.overdue = [(t, s) for t, s in self.overdue if not s.closed]
        with reg.region(self.lock_wait()) as held:
            # Looked at in the region: no section can open between the look and the write.
            loop_seen = self.flavor.loop_seen(now)
            reg.apply_rule(now, self.flavor.running_inside(reg, frame, loop_seen), loop_seen,
                           held)
        self.retiring_vouch(now)
        reg.next_wake = self.next_look(now, earliest, look_at, undelivered or cancelled)

    def look(self, now):
        """In a region: (what is due, the earliest open section, when the report wants a
        look, whether anything is open); the report lines are logged after it."""
        reg = self.registry
        with reg.region(self.lock_wait()) as held:
            self.check_lock(held)
            if held:
                reg.apply_limit()
            is_open = reg.open
            due = self.take_due(now, held) if is_open else []
            earliest = reg.earliest(held) if is_open else None
            look_at = self.watch.look(now) if held and self.watch is not None else INF
            if held and reg.requests:             # the threaded worker's requests
                due += reg.requests_due(now)
                look_at = min(look_at, reg.next_request_deadline())
                is_open = True
        if self.watch is not None:
            self.watch.emit()                     # outside the region: it logs
        return due, earliest, look_at, is_open

    def idle(self, now):
        """Nothing open: withdraw what the last section left standing; look again later."""
        reg = self.registry
        self.overdue.clear()
        with reg.region(self.lock_wait()) as held:
            reg.apply_rule(now, False, None, held)
        self.retiring_vouch(now)
        reg.next_wake = now + IDLE_TICK

    def next_look(self, now, earliest, look_at, undelivered):
        """When to look next: the earliest deadline, grace or report, within a tick.

        A grace that is over without an escalation (the flavour waits: a gevent hub
        blocked by another greenlet) is looked at again every ``RESEND``, not at
        once: the guard spun, taking the GIL from the greenlet that blocks the hub.
        """
        wake = now + self.tick
        if earliest is not None:
            wake = min(wake, self.registry.deadline_of(earliest))
        for escalate_at, section in self.overdue:
            wake = min(wake, max(escalate_at, (section.delivered or 0) + self.grace,
                                 now + RESEND))
        if undelivered:
            wake = min(wake, now + RESEND)
        return min(wake, look_at)

    def lock_wait(self):
        """How long a region of the guard's waits for the lock: once a step found the
        serving thread frozen, no longer (a try, until a step gets it), so that every
        deadline is acted on in time while it stays frozen."""
        return 0 if self.frozen else LOCK_WAIT

    def check_lock(self, held):
        """Note (once) a serving thread frozen inside a region; the step goes on without the lock.

        Nothing of heartworker's blocks in a region, so a region that lasts
        ``LOCK_WAIT`` seconds runs application code that does not return (a
        finalizer or a signal handler).  The serving thread is then stuck like
        any other: the guard reads what it needs and applies the rule anyway.
        """
        if held:
            self.frozen = False
        elif not self.frozen:
            self.frozen = True
            self.log.warning("heartworker: the serving thread has been inside heartworker's "
                             "bookkeeping for over %.0f s (a finalizer or signal handler that "
                             "does not return); treating it as stuck", LOCK_WAIT)

    def current_frame(self):
        return sys._current_frames().get(self.registry.tid)
