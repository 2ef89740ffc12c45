"""Request threads as section owners: the threaded worker's flavour (``gthread.py``),
also the uvicorn worker's for the thread pool's threads lent to its tasks (``lent.py``).

A thread owns its sections while it serves a request (it is in ``registry.requests``).
At a deadline the cancellation is raised in that thread alone
(``PyThreadState_SetAsyncExc``), only while it runs the app's code; a thread that
it does not end within the grace is the backstop's (``escalates``).
"""

import ctypes
import os
import sys
import threading
import time
from time import monotonic

from . import native
from .origins import in_server_code, runs_app_code, writing_response
from .regions import LOCK_WAIT
from .section import SectionCapExceeded

LOOP_EVERY = 2.0   # the main loop notifies at least every second: silent longer, it is stuck
LAND_WAIT = 10.0   # seconds a thread running library code may keep a cancellation waiting
TRIES = 20         # looks at a thread per guard step, a millisecond apart, for app code


def thread_cpu(ident):
    """CPU seconds thread ``ident`` has run (it grows while the thread runs, not blocked)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError):
        return 0.0


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


def a_thread_inside(registry, anchors, vouches):
    """Does a thread that owns sections, one that ``vouches(owner)``, run code inside one
    of them now?  (``anchors``: ``registry.anchors()``.)"""
    frames = sys._current_frames()
    return any(vouches(owner) and registry.inside(frames.get(owner), anchors)
               for owner in list(registry.stacks))


class ThreadFlavor:
    """Owners are request threads; the main loop proves itself alive by notifying."""

    owner = staticmethod(native.native_get_ident())
    retires = True    # the backstop retires the worker (see the module docstring)

    def __init__(self):
        self.local = threading.local()
        self.beat_at = monotonic()
        self.in_server = set()      # owners whose cancellation waits: the thread is in Gunicorn
        self.waiting = {}           # owner -> (first try, its CPU time then, running?)
        self.cpu_seen = {}          # owner -> its CPU time at the last has_run()
        self.retiring_until = 0.0   # set by retire(): the graceful stop's end

    def loop_seen(self, now):
        beat_at = self.beat_at
        if now - beat_at <= LOOP_EVERY or self.retiring_until > now:
            # (retiring: Gunicorn 23's graceful wait does not notify; the wait is bounded)
            return max(beat_at, now - LOOP_EVERY)
        return None

    @staticmethod
    def running_inside(registry, frame, loop_seen):
        """Is the main thread (``frame``), or, while the main loop is silent, a request
        thread, running code inside an open section?

        A section's code that holds the GIL keeps the main loop from notifying
        for longer than ``LOOP_EVERY``: the loop is not stuck then, and the
        standing vouch must stand (found by benchmarks/soak.py).  While the loop
        is seen, its rule applies (the vouch, never less than now).
        """
        anchors = registry.anchors()
        if registry.inside(frame, anchors):
            return True
        if loop_seen is not None or not registry.stacks:
            return False
        return a_thread_inside(registry, anchors, lambda owner: owner is not None)

    def forget(self, owner):
        """The thread's request is over: what was noted about its cancellation goes."""
        self.in_server.discard(owner)
        self.waiting.pop(owner, None)
        self.cpu_seen.pop(owner, None)

    def has_run(self, owner):
        """Has thread ``owner`` run since this was last asked (its CPU time grew)?  Yes,
        the first time."""
        now = thread_cpu(owner)
        before = self.cpu_seen.get(owner)
        self.cpu_seen[owner] = now
        return before is None or now > before

    def sending(self, request):
        """Is the request's thread in Gunicorn's own code (sending the response)?"""
        return writing_response(sys._current_frames().get(request.owner))

    def escalates(self, section, running):
        """Past the grace, retire the worker if the exception was sent and did not end the
        thread, or could not be sent because the thread is stuck in library code.

        Not while it waits because the thread is in Gunicorn's code (sending to a
        slow client: stock would wait too), nor while the thread still runs
        library code (it comes back to the app's code soon, where it is sent), for
        ``LAND_WAIT`` seconds at most.
        """
        if section.delivered:
            return True
        owner = section.owner
        if owner in self.in_server:
            return False
        first, _, running = self.waiting.get(owner, (None, None, False))
        return not running or monotonic() - first > LAND_WAIT

    @staticmethod
    def stock_would_kill(guard, section, now):
        """Stock gthread never ends a request thread (only a GIL-holding call, unseen here)."""
        return False

    def interrupt(self, guard, section, running):
        """Raise the cancellation in the section's thread, once, if it serves its request.

        Only while the thread runs the app's code (:func:`runs_app_code`): the
        thread is looked at up to ``TRIES`` times a millisecond apart; if it is
        in library code all along, the guard tries again at its next step.
        """
        owner = section.owner
        for _ in range(TRIES):
            frame = sys._current_frames().get(owner)
            if runs_app_code(frame) and self.send(guard, section):
                return
            if in_server_code(frame):
                self.in_server.add(owner)          # sending to the client: not now
                return
            self.in_server.discard(owner)
            if section.closed or section.delivered:
                return
            native.sleep(0.001)                    # (releases the GIL: the thread moves on)
        first, cpu, _ = self.waiting.get(owner, (monotonic(), None, False))
        now_cpu = thread_cpu(owner)
        self.waiting[owner] = (first, now_cpu, cpu is not None and now_cpu > cpu)

    def send(self, guard, section):
        """Raise it now, if the thread still serves that request and runs the app's code."""
        reg, owner = guard.registry, section.owner
        with reg.region(LOCK_WAIT) as held:
            # In the region: no request can end (and withdraw it) between the look and the send.
            frame = sys._current_frames().get(owner)
            if not held or section.closed or section.delivered or owner not in reg.requests \
                    or not runs_app_code(frame) or reg.in_delicate_code(frame):
                return False
            self.waiting.pop(owner, None)
            RequestCancelled.messages[owner] = section.why
            _async_raise(owner, RequestCancelled)
            # One exception per thread (it cannot be raised again while its handling
            # cannot be seen from outside), and the grace counts from now (see Guard.step).
            now = monotonic()
            for _, each in guard.overdue:
                if each.owner == owner:
                    each.delivered = now
            return True

    def request_context(self):
        """Where the current request's Gunicorn response is noted: its thread."""
        return self.local

    def frame_of(self, section):
        return sys._current_frames().get(section.owner)

    waiting_frame = frame_of

    @staticmethod
    def frames_at_abort():
        """The arbiter's abort lands in the main thread: sections run on the request threads."""
        return sys._current_frames()


def exit_past_threads(log, stuck):
    """Exit now if threads still run requests (``stuck``: (what each runs, since when)):
    they cannot be ended, and Python would wait for them forever at exit."""
    if stuck:
        now = monotonic()
        log.warning("heartworker: worker (pid %s) exits with %d request(s) still running in "
                    "threads that cannot be ended: %s", os.getpid(), len(stuck),
                    ", ".join(f"{name} ({now - started:.1f} s)" for name, started in stuck))
        os._exit(1)
