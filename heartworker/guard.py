"""The guard: one real OS thread per worker that enforces deadlines and applies the rule.

It does little, like gevent's ``_monitor.py``: it sleeps until the earliest
section deadline (so it acts within milliseconds of a cap, not on a coarse
tick) or, while any section is open, for ``tick`` seconds at most.  Each time
it wakes it

1. aborts the worker if the arbiter is gone (an orphan must not live on);
2. acts on every section whose deadline has passed: the flavour (sync or
   gevent) either aborts the worker or cancels the one greenlet;
3. applies :func:`heartworker.registry.vouch` to what it sees the serving
   thread doing.

Aborting means: log at CRITICAL (section, elapsed, cap, stack), then
SIGABRT delivered to the serving thread itself (``signal.pthread_kill``, so a
thread blocked in a syscall is interrupted) and Gunicorn's ``handle_abort``
runs the ``worker_abort`` hook.  If the worker still lives ``ABORT_GRACE``
seconds later, the guard ends the process.  If the guard itself fails, it
logs why and the worker falls back to stock Gunicorn behaviour.
"""

import os
import signal
import sys
from time import monotonic

from . import native
from .stacks import format_stack

ABORT_GRACE = 1.0
IDLE_TICK = 1.0
LONGEST_WAIT = 3600.0


class Guard:
    def __init__(self, registry, flavor, *, tick, ppid, log, abort_dump=None):
        self.registry = registry
        self.flavor = flavor
        self.tick = tick
        self.ppid = ppid
        self.log = log
        self.abort_dump = abort_dump
        self.overdue = []          # [(escalate_at, Section)] being cancelled
        self._bell = native.allocate_lock()
        self._bell.acquire()
        self.aborting = False
        registry.ring = self.ring

    def start(self):
        native.start_new_thread(self._main)

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
            while not self.aborting:
                self.sleep(self.registry.next_wake - monotonic())
                self.step(monotonic())
        except BaseException:
            self.fail()

    def fail(self):
        try:
            self.registry.disable()
        finally:
            self.log.exception("heartworker: the guard thread failed; this worker falls "
                               "back to stock Gunicorn timeouts (sections no longer vouch)")

    def step(self, now):
        reg = self.registry
        with reg.lock:
            reg.apply_limit()
            earliest = reg.earliest()
            is_open = reg.open
        if not is_open:
            self.overdue.clear()
            reg.apply_rule(now, False, None)   # withdraws what the last section left standing
            reg.next_wake = now + IDLE_TICK
            return
        if os.getppid() != self.ppid:
            self.abort(f"the arbiter (pid {self.ppid}) is gone while a section is open",
                       self.current_frame())
            return
        frame = self.current_frame()
        while earliest is not None and reg.deadline_of(earliest) <= now:
            with reg.lock:
                due = None if earliest.closed else reg.innermost(earliest)
            if due is not None:           # it may have ended since we looked
                running = reg.inside_section(frame, due)
                if self.flavor.on_deadline(self, due, running, now) == "abort":
                    return
            with reg.lock:
                if not earliest.closed:   # cancelled: it has ABORT_GRACE to leave
                    reg.pop_earliest()
                    self.overdue.append((now + ABORT_GRACE, earliest))
                earliest = reg.earliest()
        for escalate_at, section in self.overdue:
            if not section.closed and escalate_at <= now:
                running = reg.inside_section(frame, section)
                self.abort(self.overdue_message(section, now),
                           frame if running else self.flavor.frame_of(section))
                return
        self.overdue = [(t, s) for t, s in self.overdue if not s.closed]
        reg.apply_rule(now, reg.inside(frame), self.flavor.loop_seen(now))
        wake = now + self.tick
        if earliest is not None:
            wake = min(wake, reg.deadline_of(earliest))
        for escalate_at, _ in self.overdue:
            wake = min(wake, escalate_at)
        reg.next_wake = wake

    def current_frame(self):
        return sys._current_frames().get(self.registry.tid)

    # -- messages and the abort ------------------------------------------------
    def deadline_message(self, section, now):
        reg = self.registry
        elapsed = now - section.started
        if reg.limit < section.deadline:
            why = "ran past the graceful timeout after SIGTERM"
        elif section.deadline < section.started + section.cap:
            why = "ran past its enclosing section's deadline"
        else:
            why = "ran past its cap"
        return (f"heartworker: section {section.describe()} {why}: "
                f"{elapsed:.2f} s elapsed, cap {section.cap:g} s")

    def overdue_message(self, section, now):
        return (f"heartworker: section {section.describe()} is still running "
                f"{now - self.registry.deadline_of(section):.2f} s after its deadline "
                f"({now - section.started:.2f} s elapsed, cap {section.cap:g} s) "
                f"although it was cancelled")

    def count(self, metric):
        """Count an event in statsd, when Gunicorn's logger is its statsd logger."""
        increment = getattr(self.log, "increment", None)
        if increment is not None:
            increment(metric, 1)

    def abort(self, message, frame):
        """Log, then abort the worker the way Gunicorn's arbiter would; never returns normally."""
        self.aborting = True
        # The serving thread may be busy in Python: without this, every write of the
        # log below would wait a 5 ms switch interval for the GIL.  The process is ending.
        sys.setswitchinterval(1e-4)
        self.log.critical("%s; aborting worker (pid %s). Stack of the serving thread "
                          "(most recent call last):\n%s", message, os.getpid(), format_stack(frame))
        self.count("heartworker.abort")
        if self.abort_dump is not None:
            self.abort_dump.disable()   # the stack is logged already
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
