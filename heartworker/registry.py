"""One worker's registry of open sections, and the modules that hold its jobs.

One registry per worker process, for every worker class.  The *serving
thread* handles requests (the main thread; under gevent, the hub's thread,
whose greenlets are the section *owners*; in the threaded worker, also each
request thread while it serves a request).  Sections entered from any other
thread are not registered: they vouch for nothing, and they are not capped.

    deadline.py   a section as a value: when it must end (cap, enclosing, stall, graceful limit)
    store.py      the open sections: a stack per owner, one deadline heap (the hot path)
    stalls.py     progress: an owner's beat moves its sections' stall deadlines
    queries.py    what the guard asks: which section is due, whose code runs where
    vouching.py   the vouching rule, and the one writer of the heartbeat file
    requests.py   the threaded worker's request threads as owners, their requests as deadlines
    regions.py    every update as a region, safe from finalizers and signal handlers

Who owns a section (a thread, a greenlet) is the worker's flavour's answer
(``owner``), given at construction; the core asks nothing else of it.

The registry is one object whose methods live in those modules: the state is
on the object because ``enter`` and ``exit``, run on every section, read it
directly (each hop to a component would cost an attribute look-up there).
Each module names the attributes it owns in :meth:`Registry.__init__`.

Fork.  A child forked from a worker (``multiprocessing``, a plain
``os.fork()``) must never vouch for its parent: :meth:`Registry.forked` runs
in the child (``os.register_at_fork``, see ``section.py``) and turns the
copy into a no-op with a fresh lock, before any code of the child runs.
"""

from time import monotonic

from . import native
from .deadline import INF
from .stalls import Progress
from .queries import Queries
from .regions import Regions, nothing, nothing_at
from .requests import Requests
from .store import Store
from .vouching import Vouching


def nothing_left(section, exc):
    """(A cancelled section is left with ``exc``: it goes on as it is.)"""


def no_lending():
    """(No thread runs a task's work: ``lent.py``.)"""
    return None


def not_lent(ident):
    """(The calling thread, not the serving one, runs no task's work: ``lent.py``.)"""
    return False


class Registry(Store, Progress, Queries, Requests, Vouching, Regions):
    """Open sections of the serving thread(s), the standing vouch, and the heartbeat writes."""

    def __init__(self, heartbeat, *, serving_tid, default_cap, window, owner=None):
        # Who may open sections: the serving thread (and the threaded worker's request
        # threads, requests.py); who owns them, the flavour's ``owner()``.
        self.tid = serving_tid
        self.owner = owner        # None: one owner, the serving thread itself
        self.get_ident = native.native_get_ident()
        self.requests = {}        # threaded worker: thread ident -> its Request
        # The uvicorn worker: a thread pool's thread that runs a task's work is registered
        # as it opens its first section (``lend(ident)``); ``lending()`` says whose work
        # (lent.py), and ``entered_async()`` is told of each ``async with long_section``.
        self.lend = not_lent
        self.lent_threads = 0     # (how many are registered now)
        self.lending = no_lending
        self.entered_async = nothing
        self.enabled = True
        # store.py: the open sections.
        self.default_cap = default_cap
        self.stacks = {}          # owner -> [Section, ...], innermost last
        self.fresh = []           # sections opened since the guard last filed them
        self.heap = []            # (deadline, seq, Section), closed ones removed lazily
        self.closed_in_heap = 0
        self.open = 0
        self.seq = 0              # breaks deadline ties in the heap
        self.stalls = 0           # open sections with a stall limit
        self.progressed = {}      # owner -> (monotonic, note) of its last progress
        # vouching.py: what the heartbeat file says.
        self.heartbeat = heartbeat
        # Any vouch in [deadline - window, deadline] keeps the worker alive to
        # its deadline and dead by deadline + window: window is the arbiter's timeout.
        self.window = window
        self.standing = None      # the standing vouch (see vouching.vouch())
        self.written = None       # what we last wrote; None: Gunicorn's own heartbeat
        self.limit = INF          # graceful limit on every deadline
        self.pending_limit = INF  # set by a signal handler, applied in a region
        self.alive_at = monotonic()
        # regions.py: every update is a region.
        self.lock = native.allocate_rlock()
        self.busy = False         # a region is updating the state
        self.serving_in = False   # the serving thread is in a quick region (no lock)
        self.deferred = []        # sections closed while a region was busy, closed at its end
        # A cancellation signal found this thread in the bookkeeping: `land(frame)`
        # raises it where the bookkeeping returns to the section's code.
        self.cancel_waits = False
        self.land = nothing_at
        # A cancelled section left with an exception: the flavour may turn it into the
        # cancellation (an asyncio task's CancelledError, tasks.py); else it goes on.
        self.leave_cancelled = nothing_left
        self.handler_codes = frozenset()  # the worker's signal handlers (in_delicate_code)
        # The guard's: when it looks next, and how to wake it sooner.
        self.next_wake = INF
        self.ring = nothing

    def adopt(self, owner, keep=False):
        """Sections are owned by ``owner()`` from now on (None: the serving thread).

        The worker class's flavour is installed after the startup section
        opened: the serving thread's open sections become the current owner's
        (``keep``: they stay the serving thread's, as the uvicorn worker's
        startup section stays its loop thread's).
        """
        with self.region() as held:
            if not held:
                return
            self.owner = owner
            if keep:
                return
            stack = self.stacks.pop(None, None)
            current = owner() if owner is not None else None
            if stack:
                for section in stack:
                    section.owner = current
                self.stacks[current] = stack
            if None in self.progressed:
                self.progressed[current] = self.progressed.pop(None)

    def forked(self):
        """In a child forked from this worker: never vouch, never wait (``os.register_at_fork``).

        The child has none of the parent's threads, so the lock may be held
        by a thread that no longer exists: replace it.  The heartbeat
        descriptor is the parent's file: close it.
        """
        self.enabled = False
        self.lock = native.allocate_rlock()
        self.busy = self.serving_in = False
        self.deferred = []
        self.ring = nothing
        self.cancel_waits, self.land = False, nothing_at   # the parent's guard is not here
        self.heartbeat.close()
