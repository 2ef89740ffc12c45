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
"""

import heapq
import math
from time import monotonic

from . import native

INF = math.inf
MAX_STACK_WALK = 1000  # frames; deeper stacks are treated as "outside sections"


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
    * The serving thread is running code inside an open section (``inside``):
      the *standing vouch*, ``standing``.  It is the latest deadline of the open
      sections that could be running when no Python thread can run (the
      serving thread's innermost section in the sync worker; the latest one of
      all open greenlets' sections under gevent), clipped by the graceful
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
    enclosing section's deadline if that comes first.  The registry's graceful
    ``limit`` may bring it nearer still (see :meth:`Registry.deadline_of`).
    """

    __slots__ = ("registry", "name", "cap", "deadline", "owner", "frame", "started",
                 "in_heap", "closed")

    def __init__(self, registry, name, cap, deadline, owner, frame, started, in_heap):
        self.registry = registry
        self.name = name
        self.cap = cap
        self.deadline = deadline
        self.owner = owner
        self.frame = frame
        self.started = started
        self.in_heap = in_heap
        self.closed = False

    def describe(self):
        if self.name:
            return repr(self.name)
        code = self.frame.f_code if self.frame is not None else None
        if code is None:
            return "(unnamed)"
        return f"(unnamed, in {code.co_name} at {code.co_filename}:{code.co_firstlineno})"


class Registry:
    """Open sections of the serving thread, the standing vouch, and the heartbeat writes."""

    def __init__(self, heartbeat, *, serving_tid, default_cap, window, owner=None):
        self.heartbeat = heartbeat
        self.tid = serving_tid
        self.default_cap = default_cap
        # Any vouch in [deadline - window, deadline] keeps the worker alive to
        # its deadline and dead by deadline + window: window is the arbiter's timeout.
        self.window = window
        self.owner = owner        # None: one owner, the serving thread itself
        self.get_ident = native.native_get_ident()
        self.lock = native.allocate_lock()
        self.stacks = {}          # owner -> [Section, ...], innermost last
        self.entry_frames = {}    # id(frame that entered) -> number of open sections
        self.heap = []            # (deadline, seq, Section), closed ones removed lazily
        self.closed_in_heap = 0
        self.open = 0
        self.standing = None      # the standing vouch (see vouch())
        self.written = None       # what we last wrote; None: Gunicorn's own heartbeat
        self.limit = INF          # graceful limit on every deadline
        self.pending_limit = INF  # set by a signal handler, applied under the lock
        self.alive_at = monotonic()
        self.enabled = True
        self.next_wake = INF      # when the guard will next look; maintained by the guard
        self.ring = _nothing      # wakes the guard; set by the guard
        self.seq = 0              # breaks deadline ties in the heap

    # -- the serving thread ------------------------------------------------
    def enter(self, name, cap, frame, started=None):
        """Open a section for the current owner; return it, or None if it is not ours to vouch."""
        if not self.enabled or self.get_ident() != self.tid:
            return None
        now = monotonic()
        if cap is None:
            cap = self.default_cap
        if started is None:
            started = now
        deadline = started + cap
        owner = self.owner() if self.owner is not None else None
        with self.lock:
            self.apply_limit()
            stacks = self.stacks
            stack = stacks.get(owner)
            if stack is None:
                stack = stacks[owner] = []
            if stack and stack[-1].deadline <= deadline:
                # Clipped to the enclosing deadline: that section's heap entry stands
                # for this one too (see innermost()).
                deadline = stack[-1].deadline
                section = Section(self, name, cap, deadline, owner, frame, started, False)
            else:
                section = Section(self, name, cap, deadline, owner, frame, started, True)
                self.seq += 1
                heapq.heappush(self.heap, (deadline, self.seq, section))
            stack.append(section)
            key = id(frame)
            entries = self.entry_frames
            entries[key] = entries.get(key, 0) + 1
            self.open += 1
            # The standing vouch: exact with one owner, the latest deadline with several
            # (another owner's section is open, so a standing vouch exists).
            self._stand(deadline if len(stacks) == 1 else max(deadline, self.standing))
        if deadline < self.next_wake:
            self.ring()
        return section

    def exit(self, section):
        """Close ``section`` (normally the innermost of its owner).  Writes nothing."""
        with self.lock:
            if section.closed:
                return
            section.closed = True
            stack = self.stacks[section.owner]
            if stack[-1] is section:
                stack.pop()
            else:
                stack.remove(section)
            if not stack:
                del self.stacks[section.owner]
            key = id(section.frame)
            section.frame = None      # do not keep the caller's locals alive
            entries = self.entry_frames
            left = entries[key] - 1
            if left:
                entries[key] = left
            else:
                del entries[key]
            self.open -= 1
            if not self.open:
                # The vouch stands until the next heartbeat or guard step withdraws it.
                self.heap.clear()
                self.closed_in_heap = 0
                self.standing = None
                self.alive_at = monotonic()
                return
            if not section.in_heap:
                return    # nested, clipped: the deadlines and the standing vouch are unchanged
            self.closed_in_heap += 1
            if self.closed_in_heap > 64 and 2 * self.closed_in_heap > len(self.heap):
                self.heap = [item for item in self.heap if not item[2].closed]
                heapq.heapify(self.heap)
                self.closed_in_heap = 0
            if len(self.stacks) == 1:
                # One owner left: its innermost deadline is exact again.
                self._stand(next(iter(self.stacks.values()))[-1].deadline)

    def beat(self, notify):
        """Run Gunicorn's ``notify()``: the serving loop is alive now.

        Under the lock, so that the guard never writes between Gunicorn's write
        and the standing vouch's.
        """
        with self.lock:
            notify()
            now = monotonic()
            self.apply_limit()
            self.alive_at = now
            if self.standing is None:
                self.written = None   # Gunicorn's notify() just wrote "now"
            else:
                # Gunicorn's notify() just overwrote the standing vouch with "now".
                self._write(max(now, self.standing))

    def set_limit(self, limit):
        """No deadline may pass ``limit`` (the graceful timeout).  Safe in a signal handler.

        The handler may interrupt this very thread while it holds the lock, so
        the limit is only recorded here; it takes effect at once if the lock is
        free, else at the next section entry, heartbeat, or guard step.
        """
        self.pending_limit = min(self.pending_limit, limit)
        if self.lock.acquire(False):
            try:
                self.apply_limit()
            finally:
                self.lock.release()
        self.ring()

    def disable(self):
        """Stop vouching for good: back to Gunicorn's own heartbeat."""
        with self.lock:
            self.enabled = False
            self.standing = None
            if self.written is not None:
                self._write(self.alive_at)
                self.written = None

    # -- the guard -----------------------------------------------------------
    def deadline_of(self, section):
        return min(section.deadline, self.limit)

    def earliest(self):
        """The open section with the earliest deadline, or None.  Call with the lock held."""
        heap = self.heap
        while heap and heap[0][2].closed:
            heapq.heappop(heap)
            self.closed_in_heap -= 1
        return heap[0][2] if heap else None

    def innermost(self, section):
        """The innermost open section of ``section``'s owner: it is due when ``section`` is.

        A nested section's deadline is never later than its enclosing one's, and one
        clipped to it has no heap entry of its own, so the heap's earliest section
        may be an enclosing one; the work that ran out of time is the innermost.
        Call with the lock held.
        """
        stack = self.stacks.get(section.owner)
        return stack[-1] if stack else section

    def pop_earliest(self):
        """Take the earliest open section out of the deadline heap (it is being dealt with)."""
        heapq.heappop(self.heap)

    def inside(self, frame):
        """Is ``frame`` (the serving thread's current frame) running inside an open section?

        True when the entry frame of an open section is on its stack: the
        code that opened the section has not returned or left the ``with``.
        """
        entries = self.entry_frames
        depth = 0
        while frame is not None and depth < MAX_STACK_WALK:
            if id(frame) in entries:
                return True
            frame = frame.f_back
            depth += 1
        return False

    def inside_section(self, frame, section):
        """Is ``frame``'s stack running the code of ``section`` right now?"""
        target = section.frame
        if target is None:
            return False
        depth = 0
        while frame is not None and depth < MAX_STACK_WALK:
            if frame is target:
                return True
            frame = frame.f_back
            depth += 1
        return False

    def apply_rule(self, now, inside, loop_seen):
        """Write what :func:`vouch` says, given what the guard just saw.

        ``loop_seen`` is when the serving loop last answered a probe, if it
        answered the latest one (the loop is free), else None.
        """
        with self.lock:
            self.apply_limit()
            if inside:
                self.alive_at = now
            elif loop_seen is not None:
                self.alive_at = max(self.alive_at, loop_seen)
            if self.standing is None and self.written is None:
                return                # Gunicorn's own heartbeat, untouched
            want = vouch(now, self.standing, inside, loop_seen is not None, self.alive_at)
            if want != self.written:
                self._write(want)
            if self.standing is None:
                self.written = None   # withdrawn: back to Gunicorn's heartbeat

    def apply_limit(self):
        """Apply a limit recorded by :meth:`set_limit`.  Call with the lock held."""
        if self.pending_limit < self.limit:
            self.limit = self.pending_limit
            if self.standing is not None and self.standing > self.limit:
                self.standing = self.limit
                self._write(self.limit)

    # -- internals (lock held) ---------------------------------------------
    def _stand(self, standing):
        """Make ``standing`` the standing vouch; write it unless what is written already works.

        Anything in ``[standing - window, standing]`` keeps the worker alive to
        the deadline and dead by deadline + window, so most entries need no syscall.
        """
        standing = min(standing, self.limit)
        self.standing = standing
        written = self.written
        if written is None or not (standing - self.window <= written <= standing):
            self._write(standing)

    def _write(self, when):
        self.heartbeat.write(when)
        self.written = when


def _nothing():
    pass
