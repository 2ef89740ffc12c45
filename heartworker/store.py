"""The store of open sections: a stack per owner, and one deadline heap.

Entering and leaving a section does only what the vouching rule needs: the owner,
the anchor frame, the deadline, the standing vouch (and the one write when the
file does not already cover it; leaving never writes).  On the serving thread it
takes no lock (a *quick region*, see regions.py).  A new section is only listed
(``fresh``); the guard files it in the deadline heap at its next look
(``Queries.earliest``), where closed entries are dropped lazily and the heap is
compacted when half of it is closed.  The guard never scans the open sections: it
looks at the heap's top and walks the serving thread's stack.  ``add`` and
``exit`` are the hot path.
"""

import heapq
from time import monotonic

from .deadline import INF, Section, stall_bound
from .regions import release_frames


class Store:
    """The open sections of each owner (a part of the registry)."""

    # -- the hot path ---------------------------------------------------------------
    def enter(self, name, cap, frame, started=None, cancel=True, stall=None):
        """Open a new section for the current owner; return it, or None if it is not ours
        to vouch.  (``long_section`` opens itself: :meth:`add`.)"""
        section = Section(self, name, cap, INF, None, frame, 0.0, cancel, stall)
        return section if self.add(section, frame, started) else None

    def add(self, section, frame, started=None):
        """Open ``section`` (its registry, name, cap, stall and cancel set) with anchor ``frame``
        for the current owner; False if it is not ours to vouch (nothing is registered).

        The serving thread updates the sections in a *quick region* (``serving_in``,
        see regions.py) unless another region is in progress: no lock is taken.
        """
        ident = self.get_ident()
        if not self.enabled or ident != self.tid and ident not in self.requests \
                and not self.lend(ident):       # (a thread pool's, lent to a task: lent.py)
            return False
        if started is None:
            started = monotonic()
        cap = section.cap
        if cap is None:
            cap = section.cap = self.default_cap
        section.owner = self.owner() if self.owner is not None else None
        section.frame = frame
        if section.name is None and frame is not None:
            section.code = frame.f_code
        section.started = started
        section.deadline = started + cap
        section.closed = False
        section.bound = None
        if ident == self.tid:
            if self.serving_in:   # called back from within this thread's quick region (a
                return False      # finalizer, a handler): vouch for nothing; never wait for
            if not self.busy:     # the lock, whose holder may be waiting for this region
                self.serving_in = True
                try:              # (at once: nothing may leave the flag set)
                    quick = not self.busy         # (no other region began meanwhile)
                    if quick:
                        self._file(section)
                finally:
                    self.serving_in = False
                if quick:
                    if self.deferred:
                        self.settle()
                    if section.deadline < self.next_wake or section.stall is not None \
                            and started + section.stall < self.next_wake:
                        self.ring()   # (its stall deadline: no progress yet)
                    return True
        if not self._locked(self._file, section):
            return False          # (a finalizer or handler, mid-update here: no vouch)
        if section.deadline < self.next_wake or \
                section.stall is not None and started + section.stall < self.next_wake:
            self.ring()
        return True

    def exit(self, section):
        """Close ``section`` (normally the innermost of its owner).  Writes nothing."""
        if not self.enabled:
            return
        if self.get_ident() == self.tid:
            if self.serving_in:   # called back from within this thread's quick region: closed
                self.deferred.append(section)     # as it ends (no other region runs meanwhile)
                return
            if not self.busy:     # a quick region, as in `add`
                self.serving_in = True
                try:
                    quick = not self.busy
                    if quick:
                        self._close(section)
                finally:
                    self.serving_in = False
                if quick:
                    section.frame = None      # outside the region: this may free the
                    if self.deferred:         # caller's locals
                        self.settle()
                    return
        if self._locked(self._close, section):
            section.frame = None  # outside the region: this may free the caller's locals
        else:                     # a finalizer, mid-update on this thread: closed at the
            self.deferred.append(section)     # end of that region

    def _locked(self, update, section):
        """``update(section)`` in a region that takes the lock (another thread's, or the
        serving thread's while another region runs); False if a region is mid-update on
        this very thread (a finalizer, a signal handler), and nothing was done.

        ``with``, ``try``: an exception from a signal handler can never leave the lock
        held or ``busy`` set.
        """
        with self.lock:
            if self.busy:         # (the lock is reentrant: the region is this thread's)
                return False
            try:
                self.busy = True
                self.await_quick_region()     # (another thread: see regions.py)
                update(section)
            finally:
                if self.deferred:
                    done = self._end()
                else:             # (the usual case, inline)
                    self.busy = False
                    done = ()
        if done:
            release_frames(done)
        return True

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

    # -- internals (in a region) -------------------------------------------------
    def _file(self, section):
        """Put ``section`` on its owner's stack and make its standing vouch."""
        if self.pending_limit < self.limit:
            self.apply_limit()
        stacks = self.stacks
        owner = section.owner
        stack = stacks.get(owner)
        if not stack:                     # (an owner's stack is dropped when it empties)
            stacks[owner] = stack = [section]
            if self.requests:             # (the threaded worker: requests.py)
                self.inside_sections(owner)
            section.in_heap = True
            self.fresh.append(section)    # (the guard files it in the heap: earliest())
        else:
            enclosing = stack[-1]
            if enclosing.deadline <= section.deadline and (
                    section.frame is enclosing.frame or
                    self.inside_section(section.frame, enclosing)):
                # Clipped to the enclosing deadline: that section's heap entry stands
                # for this one too while it is open (see innermost() and _close()).
                # Only a section whose code encloses this one's clips it: not one left
                # open in a suspended generator.  One with a stall limit keeps its own
                # entry.
                section.deadline = enclosing.deadline
                section.bound = enclosing.bound or enclosing
                section.in_heap = section.stall is not None
                if section.in_heap:
                    self.fresh.append(section)
            else:
                section.in_heap = True
                self.fresh.append(section)
            stack.append(section)
        self.open += 1
        deadline = section.deadline
        stall = section.stall
        if stall is not None:
            self.stalls += 1
        if self.stalls:
            if len(stack) > 1:
                deadline = stall_bound(stack, deadline, self.progressed.get(owner))
            elif stall is not None and section.started + stall < deadline:
                deadline = section.started + stall   # (stall_bound of a new stack: its
                #                                      owner made no progress in it yet)
        # The standing vouch: exact with one owner, the latest deadline with
        # several (another owner's section is open, so a standing vouch exists).
        # (``_stand``, inline: this runs on every entry.)
        standing = deadline if len(stacks) == 1 else max(deadline, self.standing)
        if standing > self.limit:
            standing = self.limit
        self.standing = standing
        written = self.written
        if written is None or not standing - self.window <= written <= standing:
            self._write(standing)

    def _close(self, section):
        if section.closed:
            return
        section.closed = True
        owner = section.owner
        stack = self.stacks.get(owner)
        if stack and stack[-1] is section:
            stack.pop()
            in_order = True
        elif stack:
            in_order = False
            for i, other in enumerate(stack):
                if other is section:
                    del stack[i]
                    # Out of order (a generator resumed after its enclosing `with`
                    # ended, manual __exit__ calls): the sections above it may have
                    # been clipped to its deadline with no heap entry of their own.
                    for above in stack[i:]:
                        if not above.in_heap:
                            above.in_heap = True
                            self.fresh.append(above)
                    break
        else:
            in_order = False
        if stack is not None and not stack:
            del self.stacks[owner]
            if self.progressed:
                self.progressed.pop(owner, None)
            if self.requests:
                self.outside_sections(owner)
        self.open -= 1
        if section.stall is not None:
            self.stalls -= 1
        if not self.open:
            # The vouch stands until the next heartbeat or guard step withdraws it.
            self.fresh.clear()
            if self.heap:
                self.heap.clear()
            self.closed_in_heap = 0
            self.standing = None
            self.alive_at = monotonic()
            return
        if in_order and not section.in_heap:
            return    # nested, clipped: the deadlines and the standing vouch are unchanged
        if section.in_heap:
            self.closed_in_heap += 1
            if self.closed_in_heap > 64 and \
                    2 * self.closed_in_heap > len(self.heap) + len(self.fresh):
                self.fresh = [s for s in self.fresh if not s.closed]
                self.heap = [item for item in self.heap if not item[2].closed]
                heapq.heapify(self.heap)
                self.closed_in_heap = 0
        if len(self.stacks) == 1:
            # One owner left: its innermost deadline is exact again.
            owner, stack = next(iter(self.stacks.items()))
            self._stand(self._standing_after(owner, stack))

    def _standing_after(self, owner, stack):
        """The standing vouch once ``owner``'s ``stack`` changed: see ``_file``."""
        deadline = stack[-1].deadline
        if self.stalls:
            deadline = stall_bound(stack, deadline, self.progressed.get(owner))
        return deadline if len(self.stacks) == 1 else max(deadline, self.standing)
