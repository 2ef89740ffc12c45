"""The open sections of a worker's serving thread, and the rule that vouches for it.

One registry per worker process, shared by the sync and the gevent worker.
The *serving thread* is the thread that handles requests (the main thread;
under gevent, the hub's thread, whose greenlets are the section *owners*).
Sections entered from any other thread are not registered: they vouch for
nothing, and they are not capped.

Costs: entering and leaving a section is O(log n) for n open sections (a heap
push, none for a nested section clipped to its enclosing deadline; leaving
marks the record closed and the heap is compacted when half of it is
closed).  Entering writes the heartbeat file (one ``utime``) only when what it
says does not already cover the new deadline; leaving never does.  The guard
never scans the open sections: it looks at the heap's top and walks the
serving thread's stack.

Re-entrancy.  Python may run application code in the middle of any update
here: a garbage collection can start at any allocation and run finalizers
(a generator suspended inside a section closes it from its ``__exit__``), and
a signal handler can run between any two bytecodes.  So the lock is an
``RLock`` and every update runs as a *region* flagged by ``busy``: a call that
finds its own thread already inside a region never waits and never touches
the half-updated state.  A close is queued and done when the region ends
(``deferred``, as ``weakref.WeakValueDictionary`` defers its removals); an
entry made there vouches for nothing.  No region drops the last reference to
an application object (a section's frame is released after its region), and
the guard never waits for the lock longer than ``LOCK_WAIT`` (see
``guard.py``: a serving thread frozen inside a region is treated as stuck).

Fork.  A child forked from a worker (``multiprocessing``, a plain
``os.fork()``) must never vouch for its parent: :meth:`Registry.forked` runs
in the child (``os.register_at_fork``, see ``section.py``) and turns the
copy into a no-op with a fresh lock, before any code of the child runs.
"""

import heapq
import math
import sys
from time import monotonic

from . import native

INF = math.inf
# heartworker's modules whose code updates or reads the sections (the decorator's
# wrapper, `in_section`, runs the decorated function: that is the section's code).
_BOOKKEEPING = frozenset({"heartworker.section", "heartworker.registry", "heartworker.guard",
                          "heartworker.heartbeat", "heartworker.native"})
LOCK_WAIT = 1.0   # seconds the guard waits for the lock before it treats the holder as stuck


def vouch(now, standing, inside, loop_free, alive_at):
    """The vouching rule: what the heartbeat file must say, for the guard to write.

    Gunicorn's arbiter kills a worker once ``now - mtime > timeout`` (see
    ``heartbeat.py``).  heartworker writes that mtime only under this rule (at
    section entry and at Gunicorn's heartbeat, the serving thread writes the
    standing vouch, which is what the rule says while its code runs):

    * No section open (``standing is None``): Gunicorn's own heartbeat decides,
      as in stock Gunicorn.  Leaving the last section writes nothing (it costs
      a syscall on every request); a vouch still standing from it is withdrawn
      by the next Gunicorn heartbeat or by the guard's next look, back to
      ``alive_at``, the moment the section ended.  (So only a GIL-holding call
      that starts within one guard tick after a section is still covered, up
      to that section's deadline.)
    * The serving thread (in the threaded worker, while its main loop is
      silent, any request thread) is running code inside an open section
      (``inside``): the *standing vouch*, ``standing``.  It is the latest
      deadline of the open sections that could be running when no Python
      thread can run (the serving thread's innermost section in the sync
      worker; the latest one of all open greenlets' sections under gevent, or
      of all request threads' in the threaded worker), clipped by the graceful
      limit.  It was written ahead of time at section entry, so it holds
      even while C code keeps the GIL; it is never moved later by the guard.
      At the latest the arbiter kills at ``standing + timeout``.
    * No section code is running, but the serving loop answered the last
      probe (``loop_free``, gevent's hub is not blocked): ``max(now, standing)``
      - keep the standing vouch, so that a waiting section that next takes the
      GIL for longer than ``--timeout`` is covered without any thread's help.
    * Otherwise the serving thread is stuck outside every section: stock.  The
      file says ``alive_at``, the last moment the serving thread was seen
      alive (a Gunicorn heartbeat, a probe answered, or code seen inside a
      section), so the arbiter kills at ``alive_at + timeout`` as it would
      have without heartworker.

    Deadlines themselves (the caps) are not enforced here but by the guard,
    which aborts or cancels at the deadline; the standing vouch bounds the
    worker's life even if the guard cannot run.
    """
    if standing is None:
        return alive_at
    if inside:
        return standing
    if loop_free:
        return max(now, standing)
    return alive_at


class Section:
    """One open section: a value with a deadline.

    ``deadline`` is absolute (``time.monotonic()``): ``started + cap``, or the
    enclosing section's deadline if that comes first (then ``bound`` is the
    outermost section whose deadline it is).  Two more bounds may bring it
    nearer (see :meth:`Registry.deadline_of`): the *stall* deadline
    ``stall_at``, which is the last progress (or the entry) plus ``stall``
    and moves later at each progress; and the registry's graceful ``limit``.
    The earliest of the three is the section's deadline, whatever it ends at.
    ``frame`` is the *anchor*: the frame whose presence on the owner's stack
    means "running inside this section" (see ``section.anchor``).
    """

    __slots__ = ("registry", "name", "cap", "deadline", "owner", "frame", "code", "started",
                 "in_heap", "closed", "bound", "cancel", "why", "delivered", "stall")

    def __init__(self, registry, name, cap, deadline, owner, frame, started, cancel=True,
                 stall=None):
        self.registry = registry
        self.name = name
        self.cap = cap
        self.deadline = deadline
        self.owner = owner
        self.frame = frame
        self.code = frame.f_code if frame is not None else None
        self.started = started
        self.in_heap = False
        self.closed = False
        self.bound = None
        self.cancel = cancel      # False: its deadline aborts the worker instead
        self.why = None           # the cancellation's message, once the guard cancels it
        self.delivered = False    # when its exception was delivered (once): a waiting
        #                           greenlet's throw, a request thread's async raise
        self.stall = stall        # longest time without progress (None: no limit)

    # Progress is its owner's (see Registry.progress): read it from there.
    @property
    def progress_at(self):
        """The owner's last progress since this section began, or the entry."""
        last = self.registry.progressed.get(self.owner)
        return self.started if last is None or last[0] < self.started else last[0]

    @property
    def note(self):
        """The owner's last progress note, or None."""
        last = self.registry.progressed.get(self.owner)
        return None if last is None else last[1]

    @property
    def stall_at(self):
        """When the stall limit ends it: last progress + ``stall`` (inf with no limit)."""
        return INF if self.stall is None else self.progress_at + self.stall

    kind = "section"   # what log lines call it

    def label(self):
        """``section 'load model'``, ``request 'GET /x'``: as log lines name it."""
        return f"{self.kind} {self.describe()}"

    def describe(self):
        if self.name:
            return repr(self.name)
        code = self.code
        if code is None:
            return "(unnamed)"
        return f"(unnamed, in {code.co_name} at {code.co_filename}:{code.co_firstlineno})"


class Request(Section):
    """A request of the threaded worker, seen as a deadline: ``--timeout`` outside sections.

    Its deadline is ``cap`` (the arbiter's timeout) after it was last outside
    every section: its start, or the end of its thread's last outermost
    section; while its thread is inside a section it has none (the section's
    deadline applies).  It is never on a stack: it clips nothing.
    """

    __slots__ = ()
    kind = "request"

    def __init__(self, registry, name, cap, owner, frame, started):
        super().__init__(registry, name, cap, started + cap, owner, frame, started)


class Registry:
    """Open sections of the serving thread, the standing vouch, and the heartbeat writes.

    The threaded worker has several serving threads: its request threads, each
    one while it serves a request (``requests``), besides the main thread.
    """

    def __init__(self, heartbeat, *, serving_tid, default_cap, window, owner=None):
        self.heartbeat = heartbeat
        self.tid = serving_tid
        self.default_cap = default_cap
        # Any vouch in [deadline - window, deadline] keeps the worker alive to
        # its deadline and dead by deadline + window: window is the arbiter's timeout.
        self.window = window
        self.owner = owner        # None: one owner, the serving thread itself
        self.get_ident = native.native_get_ident()
        self.lock = native.allocate_rlock()
        self.busy = False         # a region is updating the state (see the module docstring)
        self.deferred = []        # sections closed while a region was busy, closed at its end
        self.stacks = {}          # owner -> [Section, ...], innermost last
        self.entry_frames = {}    # id(anchor frame) -> number of open sections
        self.heap = []            # (deadline, seq, Section), closed ones removed lazily
        self.closed_in_heap = 0
        self.open = 0
        self.standing = None      # the standing vouch (see vouch())
        self.written = None       # what we last wrote; None: Gunicorn's own heartbeat
        self.limit = INF          # graceful limit on every deadline
        self.pending_limit = INF  # set by a signal handler, applied in a region
        self.alive_at = monotonic()
        self.enabled = True
        self.next_wake = INF      # when the guard will next look; maintained by the guard
        self.ring = _nothing      # wakes the guard; set by the guard
        self.seq = 0              # breaks deadline ties in the heap
        self.stalls = 0           # open sections with a stall limit
        self.progressed = {}      # owner -> (monotonic, note) of its last progress
        self.requests = {}        # threaded worker: thread ident -> its Request
        # A cancellation signal found this thread in the bookkeeping: `land(frame)`
        # raises it where the bookkeeping returns to the section's code.
        self.cancel_waits = False
        self.land = _nothing_at

    # -- the serving thread (hot path: regions written out inline) -------------------
    def enter(self, name, cap, frame, started=None, cancel=True, stall=None):
        """Open a section for the current owner; return it, or None if it is not ours to vouch."""
        ident = self.get_ident()
        if not self.enabled or ident != self.tid and ident not in self.requests:
            return None
        if cap is None:
            cap = self.default_cap
        if started is None:
            started = monotonic()
        owner = self.owner() if self.owner is not None else None
        section = Section(self, name, cap, started + cap, owner, frame, started, cancel, stall)
        with self.lock:           # `with`, `try`: an exception from a signal handler
            if self.busy:         # (a finalizer, mid-update on this thread: vouch for nothing)
                return None       # can never leave the lock held or `busy` set
            try:
                self.busy = True
                if self.pending_limit < self.limit:
                    self.apply_limit()
                stacks = self.stacks
                stack = stacks.get(owner)
                if not stack:             # (an owner's stack is dropped when it empties)
                    if stack is None:
                        stack = stacks[owner] = []
                    if self.requests and owner in self.requests:
                        self.requests[owner].deadline = INF   # its sections' deadlines apply
                    self._push(section)
                elif stack[-1].deadline <= section.deadline and (
                        frame is stack[-1].frame or self.inside_section(frame, stack[-1])):
                    # Clipped to the enclosing deadline: that section's heap entry stands
                    # for this one too while it is open (see innermost() and _close()).
                    # Only a section whose code encloses this one's clips it: not one left
                    # open in a suspended generator.  One with a stall limit keeps its own
                    # entry.
                    enclosing = stack[-1]
                    section.deadline = enclosing.deadline
                    section.bound = enclosing.bound or enclosing
                    if stall is not None:
                        self._push(section)
                else:
                    self._push(section)
                stack.append(section)
                key = id(frame)
                entries = self.entry_frames
                entries[key] = entries.get(key, 0) + 1
                self.open += 1
                deadline = section.deadline
                if stall is not None:
                    self.stalls += 1
                if self.stalls:
                    deadline = self._stall_bound(stack, deadline)
                # The standing vouch: exact with one owner, the latest deadline with
                # several (another owner's section is open, so a standing vouch exists).
                self._stand(deadline if len(stacks) == 1 else max(deadline, self.standing))
            finally:
                if self.deferred:
                    done = self._end()
                else:             # (the usual case, inline)
                    self.busy = False
                    done = ()
        if done:
            _release_frames(done)
        if section.deadline < self.next_wake or \
                stall is not None and section.stall_at < self.next_wake:
            self.ring()
        return section

    def exit(self, section):
        """Close ``section`` (normally the innermost of its owner).  Writes nothing."""
        if not self.enabled:
            return
        with self.lock:
            if self.busy:         # a finalizer, mid-update on this thread: close it at the end
                self.deferred.append(section)
                return
            try:
                self.busy = True
                self._close(section)
            finally:
                if self.deferred:
                    done = self._end()
                else:             # (the usual case, inline)
                    self.busy = False
                    done = ()
        section.frame = None      # outside the region: this may free the caller's locals
        if done:
            _release_frames(done)

    def drop(self, section, wait):
        """Close a section left open, for the guard: never waits longer than ``wait``.

        ``exit`` waits for the lock; the guard must not (the serving thread may
        be frozen holding it).  Without the lock the section stays open: the
        next step that has the lock drops it.
        """
        with self.region(wait) as held:
            if held:
                self.deferred.append(section)     # closed by the region's end
        return held

    def progress(self, note=None, section=None):
        """Progress for the current owner's sections (or for ``section``'s owner): cheap.

        Progress is recorded per owner (``progressed``), so every open section
        of the owner counts it (the innermost and the ones enclosing it: their
        work moves too), and each one's stall deadline moves to now + its
        ``stall``.  The heap is left as it is (an entry there may only be
        early; the guard re-files it, see ``earliest``).
        The standing vouch moves too when a stall limit is what bounds it;
        the heartbeat file is written at most once, and not at all while
        what it says already covers the new window.
        """
        ident = self.get_ident()
        if not self.enabled or ident != self.tid and ident not in self.requests:
            return
        owner = section.owner if section is not None else (
            self.owner() if self.owner is not None else None)
        with self.region() as held:   # (not held: a finalizer or handler, mid-update here)
            stack = self.stacks.get(owner) if held else None
            if stack:
                self.progressed[owner] = (monotonic(), note)
                if self.stalls:
                    self._stand(self._standing_after(owner, stack))
        if self.cancel_waits:     # (frames: this, long_section's or the module's progress)
            self.land(sys._getframe(2))

    def beat(self, notify):
        """Gunicorn's heartbeat: the serving loop is alive now.

        While a vouch stands, the file gets the later of now and the vouch, in
        one write, instead of Gunicorn's ``notify()``: that writes "now" first,
        and a request thread that takes the GIL during its ``utime`` for a long
        C call (the threaded worker) would be left with "now" for the whole call
        (found by benchmarks/soak.py).  ``GeventWorker.notify()`` also checks
        the parent; while a section is open, the guard does that.  In a region,
        so that the guard never writes in between.
        """
        with self.region() as held:
            if not held:          # re-entered from a signal handler: just Gunicorn's heartbeat
                notify()
                return
            now = monotonic()
            self.apply_limit()
            self.alive_at = now
            if self.standing is None:
                notify()
                self.written = None   # Gunicorn's notify() just wrote "now"
            else:
                self._write(max(now, self.standing))

    def adopt(self, owner):
        """Sections are owned by ``owner()`` from now on (None: the serving thread).

        The worker class's flavour is installed after the startup section
        opened: the serving thread's open sections become the current owner's.
        """
        with self.region() as held:
            if not held:
                return
            stack = self.stacks.pop(None, None)
            current = owner() if owner is not None else None
            if stack:
                for section in stack:
                    section.owner = current
                self.stacks[current] = stack
            if None in self.progressed:
                self.progressed[current] = self.progressed.pop(None)
            self.owner = owner

    # -- the threaded worker's requests ------------------------------------------
    def request_begins(self, name, frame, cap):
        """The calling thread serves a request (``frame`` runs it) until request_done."""
        request = Request(self, name, cap, self.get_ident(), frame, monotonic())
        with self.region() as held:
            if held:
                self.requests[request.owner] = request
        if request.deadline < self.next_wake:
            self.ring()
        return request

    def request_done(self, request, clear):
        """The calling thread's request is over: no cancellation may reach it from now on.

        Sections it left open are closed; ``clear()`` withdraws a cancellation
        sent but not raised yet (both in a region, where no other is sent).
        """
        with self.region() as held:
            if not held:
                return
            request.closed = True
            if self.requests.get(request.owner) is request:
                del self.requests[request.owner]
            left = list(self.stacks.get(request.owner, ()))
            for section in reversed(left):
                self._close(section)
            clear()
        if left:
            _release_frames(left)

    def requests_due(self, now):
        """The requests past their deadline that are not being ended yet (call in a region)."""
        return [(r, r) for r in self.requests.values()
                if r.why is None and self.deadline_of(r) <= now]

    def next_request_deadline(self):
        return min((self.deadline_of(r) for r in self.requests.values() if r.why is None),
                   default=INF)

    def vouch_now(self, now):
        """Write "alive now": the threaded worker's graceful stop while it retires, which
        Gunicorn 23's wait does not notify (bounded by the guard: see ``Guard.retire``)."""
        with self.region(LOCK_WAIT) as held:
            if held and self.enabled:
                self.alive_at = now
                self._write(now if self.standing is None else max(now, self.standing))

    def set_limit(self, limit):
        """No deadline may pass ``limit`` (the graceful timeout).  Safe in a signal handler.

        The handler may interrupt a region of this very thread, so the limit is
        only recorded here; it takes effect at once if no region is busy, else
        at the next section entry, heartbeat, or guard step.
        """
        self.pending_limit = min(self.pending_limit, limit)
        with self.region(wait=0) as held:
            if held:
                self.apply_limit()
        self.ring()

    def disable(self):
        """Stop vouching for good: back to Gunicorn's own heartbeat."""
        with self.region(LOCK_WAIT):      # with the lock or, after LOCK_WAIT, without
            self.enabled = False
            self.standing = None
            if self.written is not None:
                self._write(self.alive_at)
                self.written = None

    def aborting(self, alive_at):
        """The worker is being aborted: never vouch again, and say it was last alive at ``alive_at``.

        Safe in a signal handler (no lock: nothing is written after this).  The
        arbiter's SIGKILL then waits for ``alive_at`` + ``--timeout``: the
        abort's handler gets that long to answer its client and exit.
        """
        self.enabled = False
        self.standing = None
        self._write(alive_at)

    def forked(self):
        """In a child forked from this worker: never vouch, never wait (``os.register_at_fork``).

        The child has none of the parent's threads, so the lock may be held
        by a thread that no longer exists: replace it.  The heartbeat
        descriptor is the parent's file: close it.
        """
        self.enabled = False
        self.lock = native.allocate_rlock()
        self.busy = False
        self.deferred = []
        self.ring = _nothing
        self.cancel_waits, self.land = False, _nothing_at   # the parent's guard is not here
        self.heartbeat.close()

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

    def interruptible(self, frame):
        """May an exception be raised asynchronously in ``frame``, this thread's code now?

        Not while this thread is in a region (``_is_owned`` is the C ``RLock``'s own
        test, as ``threading.Condition`` uses), nor anywhere in heartworker's own
        bookkeeping around one: a section registered but not yet handed to its
        ``with``, or closed in the books but not in its ``long_section``, would be
        left open for good.  A cancellation found here waits for the next try.
        """
        if self.busy and self.lock._is_owned():
            return False
        return not self.in_bookkeeping(frame)

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

    # -- the guard -----------------------------------------------------------
    def deadline_of(self, section):
        """When ``section`` must end: its (clipped) cap, its stall deadline, the graceful limit."""
        if section.stall is None:
            return min(section.deadline, self.limit)
        return min(section.deadline, section.stall_at, self.limit)

    def stalled(self, section):
        """Is it the stall limit (rather than a cap or the graceful limit) that ``section`` hit?"""
        return section.stall is not None and section.stall_at <= min(section.deadline, self.limit)

    def earliest(self, held=True):
        """The open section with the earliest deadline, or None.

        In a region, closed entries are dropped from the heap's top; without
        the lock (``held=False``: the serving thread is frozen in a region)
        the heap is only read.
        """
        heap = self.heap
        if not held:              # (nor one being dealt with already: see take_due)
            return min((s for _, _, s in list(heap) if not s.closed and s.why is None),
                       key=self.deadline_of, default=None)
        while heap:
            key, _, section = heap[0]
            if section.closed:
                heapq.heappop(heap)
                self.closed_in_heap -= 1
            elif key < self.deadline_of(section):
                # Progress moved its stall deadline later: re-file it (keys are never late).
                self.seq += 1
                heapq.heapreplace(heap, (self.deadline_of(section), self.seq, section))
            else:
                return section
        return None

    def innermost(self, section):
        """The innermost open section of ``section``'s owner: it is due when ``section`` is.

        A nested section's deadline is never later than its enclosing one's, and one
        clipped to it has no heap entry of its own while the enclosing section is
        open, so the heap's earliest section may be an enclosing one; the work that
        ran out of time is the innermost.  Call in a region.
        """
        stack = self.stacks.get(section.owner)
        if stack and (stack[-1].deadline <= section.deadline
                      or self.inside_section(stack[-1].frame, section)):
            return stack[-1]      # (the second: a stall, any section nested in its code)
        return section

    def pop_earliest(self):
        """Take the earliest open section out of the deadline heap (it is being dealt with)."""
        heapq.heappop(self.heap)

    def inside(self, frame):
        """Is ``frame`` (the serving thread's current frame) running inside an open section?

        True when the anchor frame of an open section is on its stack: the
        code that opened the section has not returned or left the ``with``.
        The whole stack is walked, however deep.
        """
        entries = self.entry_frames
        while frame is not None:
            if id(frame) in entries:
                return True
            frame = frame.f_back
        return False

    def past_deadline(self, frame, now, threads=None):
        """The innermost open section whose code runs and whose deadline has passed, or
        None: what the arbiter's abort ended, if C code held the GIL.

        Its code runs on ``frame``'s stack (the frame the abort's signal found),
        or, where owners are threads (the threaded worker), on its owner's stack
        in ``threads`` ({thread ident: its current frame}).
        """
        for owner, stack in list(self.stacks.items()):
            where = frame if threads is None else threads.get(owner)
            for section in reversed(list(stack)):
                if self.deadline_of(section) <= now and self.inside_section(where, section):
                    return section
        return None

    @staticmethod
    def inside_section(frame, section):
        """Is ``frame``'s stack running the code of ``section`` right now?"""
        target = section.frame
        if target is None:
            return False
        while frame is not None:
            if frame is target:
                return True
            frame = frame.f_back
        return False

    def apply_rule(self, now, inside, loop_seen, held=True):
        """Write what :func:`vouch` says, given what the guard just saw (call in a region).

        ``loop_seen`` is when the serving loop last answered a probe, if it
        answered the latest one (the loop is free), else None.
        """
        if not self.enabled:
            return                # disabled, or aborting: nothing more is written
        if held:
            self.apply_limit()
        if inside:
            self.alive_at = now
        elif loop_seen is not None:
            self.alive_at = max(self.alive_at, loop_seen)
        if self.standing is None and self.written is None:
            return                # Gunicorn's own heartbeat, untouched
        want = vouch(now, self.standing, inside, loop_seen is not None, self.alive_at)
        if want != self.written or self.standing is not None:
            # (written again at each look while a section is open: code that calls
            # Gunicorn's own ``worker.tmp.notify()`` overwrites the file behind our back)
            self._write(want)
        if self.standing is None:
            self.written = None   # withdrawn: back to Gunicorn's heartbeat

    def apply_limit(self):
        """Apply a limit recorded by :meth:`set_limit`.  Call in a region."""
        if self.pending_limit < self.limit:
            self.limit = self.pending_limit
            if self.standing is not None and self.standing > self.limit:
                self.standing = self.limit
                self._write(self.limit)

    # -- internals (in a region) -------------------------------------------------
    def _close(self, section):
        if section.closed:
            return
        section.closed = True
        owner = section.owner
        stack = self.stacks.get(owner)
        in_order = bool(stack) and stack[-1] is section
        if in_order:
            stack.pop()
        elif stack:
            for i, other in enumerate(stack):
                if other is section:
                    del stack[i]
                    # Out of order (a generator resumed after its enclosing `with`
                    # ended, manual __exit__ calls): the sections above it may have
                    # been clipped to its deadline with no heap entry of their own.
                    for above in stack[i:]:
                        if not above.in_heap:
                            self._push(above)
                    break
        if stack is not None and not stack:
            del self.stacks[owner]
            if self.progressed:
                self.progressed.pop(owner, None)
            if self.requests and owner in self.requests:
                request = self.requests[owner]   # outside sections again:
                request.deadline = monotonic() + request.cap   # --timeout from now
        key = id(section.frame)
        entries = self.entry_frames
        left = entries.get(key, 1) - 1
        if left:
            entries[key] = left
        else:
            entries.pop(key, None)
        self.open -= 1
        if section.stall is not None:
            self.stalls -= 1
        if not self.open:
            # The vouch stands until the next heartbeat or guard step withdraws it.
            self.heap.clear()
            self.closed_in_heap = 0
            self.standing = None
            self.alive_at = monotonic()
            return
        if in_order and not section.in_heap:
            return    # nested, clipped: the deadlines and the standing vouch are unchanged
        if section.in_heap:
            self.closed_in_heap += 1
            if self.closed_in_heap > 64 and 2 * self.closed_in_heap > len(self.heap):
                self.heap = [item for item in self.heap if not item[2].closed]
                heapq.heapify(self.heap)
                self.closed_in_heap = 0
        if len(self.stacks) == 1:
            # One owner left: its innermost deadline is exact again.
            owner, stack = next(iter(self.stacks.items()))
            self._stand(self._standing_after(owner, stack))

    def _standing_after(self, owner, stack):
        """The standing vouch once ``owner``'s ``stack`` changed: see ``enter``."""
        deadline = stack[-1].deadline
        if self.stalls:
            deadline = self._stall_bound(stack, deadline)
        return deadline if len(self.stacks) == 1 else max(deadline, self.standing)

    @staticmethod
    def _stall_bound(stack, deadline):
        """``deadline`` (the innermost's, clipped to the enclosing caps), or an earlier
        stall deadline of the stack: a GIL-holding call must not outlive a stall."""
        for each in stack:
            if each.stall is not None and each.stall_at < deadline:
                deadline = each.stall_at
        return deadline

    def _push(self, section):
        self.seq += 1
        section.in_heap = True
        key = section.deadline if section.stall is None else min(section.deadline, section.stall_at)
        heapq.heappush(self.heap, (key, self.seq, section))

    def _stand(self, standing):
        """Make ``standing`` the standing vouch; write it unless what is written already works.

        Anything in ``[standing - window, standing]`` keeps the worker alive to
        the deadline and dead by deadline + window, so most entries need no syscall.
        """
        if standing > self.limit:
            standing = self.limit
        self.standing = standing
        written = self.written
        if written is None or not (standing - self.window <= written <= standing):
            self._write(standing)

    def _write(self, when):
        self.heartbeat.write(when)
        self.written = when


class _Region:
    __slots__ = ("registry", "wait", "held")

    def __init__(self, registry, wait):
        self.registry, self.wait = registry, wait

    def __enter__(self):
        reg, wait = self.registry, self.wait
        lock = reg.lock
        self.held = False
        if lock.acquire(wait != 0, wait if wait > 0 else -1):
            if reg.busy:
                lock.release()
            else:
                reg.busy = self.held = True
        return self.held

    def __exit__(self, *exc):
        if self.held:
            reg = self.registry
            try:
                done = reg._end()
            finally:
                reg.lock.release()
            if done:
                _release_frames(done)
        return False


def _nothing():
    pass


def _nothing_at(frame):
    pass


def _release_frames(sections):
    for section in sections:      # outside any region: this may run finalizers
        section.frame = None
