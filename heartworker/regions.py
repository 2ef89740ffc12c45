"""Regions: every update of the open sections runs as one, safe from re-entry.

Python may run application code in the middle of any update: a garbage
collection can start at any allocation and run finalizers (a generator
suspended inside a section closes it from its ``__exit__``), and a signal
handler can run between any two bytecodes.  So the registry's lock is an
``RLock`` and every update runs as a *region* flagged by ``busy``: a call that
finds its own thread already inside a region never waits and never touches the
half-updated state.  A close is queued and done when the region ends
(``deferred``, as ``weakref.WeakValueDictionary`` defers its removals); an
entry made there vouches for nothing.  No region drops the last reference to an
application object (a section's frame is released after its region), and the
guard never waits for the lock longer than ``LOCK_WAIT`` (see ``guard.py``: a
serving thread frozen inside a region is treated as stuck).

The quick region.  Entering and leaving a section on the serving thread (the
hot path, ``store.py``) takes no lock: the serving thread sets ``serving_in``,
and goes on only if ``busy`` is still clear; every other region, once it has
the lock and has set ``busy``, waits for ``serving_in`` to clear (or, on the
serving thread itself, treats it as a region already in progress).  Under the
GIL each of those reads and writes is atomic and seen by the other thread in
order, so of two that start at once at least one sees the other (the shape of
Peterson's lock): the hot path then falls back to the lock.  A quick region
runs no application code of its own, and nothing in it waits.
"""

from math import inf as INF
from time import monotonic

from .native import sleep as _sleep

LOCK_WAIT = 1.0   # seconds the guard waits for the lock before it treats the holder as stuck
# The modules whose code a cancellation never interrupts (see Regions.in_delicate_code).
DELICATE = frozenset({"logging", "logging.handlers"})
QUICK_WAIT = 0.0002  # seconds between two looks at a quick region that has not ended yet
# heartworker's modules whose code updates or reads the sections (the decorator's
# wrapper, `in_section`, runs the decorated function: that is the section's code).
_BOOKKEEPING = frozenset("heartworker." + name for name in (
    "section", "registry", "store", "stalls", "queries", "requests", "vouching", "regions",
    "deadline", "guard", "due", "endings", "messages", "heartbeat", "native", "routes",
    "worker", "startup", "signals"))


class Regions:
    """The registry's regions (a part of :class:`~heartworker.registry.Registry`)."""

    # -- regions ---------------------------------------------------------------
    def region(self, wait=-1):
        """A region as a context manager: ``with reg.region(LOCK_WAIT) as held:``.

        ``held`` is False if this thread is already in a region (a signal
        handler or finalizer called back in) or the lock could not be had
        within ``wait`` seconds; the body then runs without it and must not
        change the sections.  ``enter`` and ``exit``, the hot path, write the
        same steps out with ``with self.lock`` instead.
        """
        return _Region(self, wait)

    def await_quick_region(self, wait=-1):
        """With the lock held and ``busy`` set: wait (up to ``wait`` s; -1: for as long as
        it takes) for the serving thread's quick region to end.  False if it did not,
        or if this is the serving thread, called back from within it."""
        if not self.serving_in:
            return True
        if self.get_ident() == self.tid:
            return False
        give_up = INF if wait < 0 else monotonic() + wait
        while self.serving_in:
            if monotonic() >= give_up:
                return False
            _sleep(QUICK_WAIT)
        return True

    def settle(self):
        """Close what was deferred during a quick region (a region that does nothing else)."""
        with self.region():
            pass

    def interruptible(self, frame):
        """May an exception be raised asynchronously in ``frame``, this thread's code now?

        Not while this thread is in a region (``_is_owned`` is the C ``RLock``'s own
        test, as ``threading.Condition`` uses), nor anywhere in heartworker's own
        bookkeeping around one: a section registered but not yet handed to its
        ``with``, or closed in the books but not in its ``long_section``, would be
        left open for good.  A cancellation found here waits for the next try.
        """
        if self.busy and self.lock._is_owned() or self.serving_in and \
                self.get_ident() == self.tid:
            return False
        return not self.in_bookkeeping(frame) and not self.in_delicate_code(frame)

    def in_delicate_code(self, frame):
        """Is ``frame``'s stack (any thread's) in code that a cancellation must not cut?

        * ``logging``: ``Handler.handle`` and the module's own lock take a lock, then
          enter the ``try`` that releases it; an exception that lands between the two
          (in a handler's ``acquire``, a filter or a formatter the app gave it: app
          code, called back from logging) leaves it held for good, and every later
          log line of another greenlet or thread waits for it (under gevent:
          ``LoopExit``).  Found by the soak on a starved machine.
        * another signal handler (``handler_codes``: the worker's, such as
          Gunicorn's ``handle_exit``, which the cancellation's signal can interrupt
          as it starts): its work would be cut short (a SIGTERM lost).

        The cancellation waits: its signal comes again every ``RESEND`` seconds.
        """
        handlers = self.handler_codes
        while frame is not None:
            if frame.f_code in handlers or frame.f_globals.get("__name__") in DELICATE:
                return True
            frame = frame.f_back
        return False

    @staticmethod
    def in_bookkeeping(frame):
        """Is ``frame`` (any thread's) in heartworker's own code around a region?"""
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not module.startswith("heartworker."):
                return False
            if module in _BOOKKEEPING and frame.f_code.co_name != "in_section":
                return True
            frame = frame.f_back
        return False

    def _end(self):
        """Close what was deferred and clear ``busy`` (lock held); return what it closed."""
        try:
            deferred = self.deferred
            if not deferred:
                return ()
            self.deferred = []
            for section in deferred:
                self._close(section)
            return deferred
        finally:
            self.busy = False


class _Region:
    __slots__ = ("registry", "wait", "held")

    def __init__(self, registry, wait):
        self.registry, self.wait = registry, wait

    def __enter__(self):
        reg, wait = self.registry, self.wait
        lock = reg.lock
        self.held = False
        if reg.serving_in and reg.get_ident() == reg.tid:
            return False          # called back from within its quick region: never wait for
        #                           the lock, whose holder may be waiting for that region
        owned = lock._is_owned()  # (re-entered: an outer region of this thread holds it)
        try:
            if lock.acquire(wait != 0, wait if wait > 0 else -1):
                if reg.busy:
                    lock.release()
                else:
                    reg.busy = True
                    if reg.await_quick_region(wait):
                        self.held = True
                    else:
                        reg.busy = False
                        lock.release()
        except BaseException:     # a signal handler's exception, between two of these
            if not owned and lock._is_owned():    # lines: never leave the lock held
                reg.busy = self.held = False
                lock.release()
            raise
        return self.held

    def __exit__(self, *exc):
        if self.held:
            reg = self.registry
            try:
                done = reg._end()
            finally:
                reg.lock.release()
            if done:
                release_frames(done)
        return False


def nothing():
    pass


def nothing_at(frame):
    pass


def release_frames(sections):
    for section in sections:      # outside any region: this may run finalizers
        section.frame = None
