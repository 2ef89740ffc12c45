"""What the guard asks of the open sections: which is due, whose code runs where."""

import heapq


class Queries:
    """Read the open sections for the guard (a part of the registry); call in a region."""

    # -- the guard -----------------------------------------------------------
    def deadline_of(self, section):
        """When ``section`` must end: :meth:`Section.due` under the graceful limit."""
        return section.due(self.limit)

    def stalled(self, section):
        """Is it the stall limit (rather than a cap or the graceful limit) that ``section`` hit?"""
        return section.stalled(self.limit)

    def earliest(self, held=True):
        """The open section with the earliest deadline, or None.

        In a region, closed entries are dropped from the heap's top; without
        the lock (``held=False``: the serving thread is frozen in a region)
        the heap is only read.
        """
        if not held:              # (nor one being dealt with already: see take_due)
            candidates = [s for _, _, s in list(self.heap)] + list(self.fresh)
            return min((s for s in candidates if not s.closed and s.why is None),
                       key=self.deadline_of, default=None)
        if self.fresh:
            self.file_fresh()
        heap = self.heap
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

    def file_fresh(self):
        """File the sections opened since the last look in the deadline heap (the
        guard's, in a region: the hot path only lists them, in ``fresh``)."""
        fresh, self.fresh = self.fresh, []
        heap = self.heap
        for section in fresh:
            if section.closed:
                self.closed_in_heap -= 1
            else:
                self.seq += 1
                heapq.heappush(heap, (section.due(), self.seq, section))

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

    def inside(self, frame, anchors=None):
        """Is ``frame`` (the serving thread's current frame) running inside an open section?

        True when the anchor frame of an open section is on its stack: the
        code that opened the section has not returned or left the ``with``.
        The whole stack is walked, however deep.  ``anchors``: :meth:`anchors`,
        if the caller asks for several frames.
        """
        if anchors is None:
            anchors = self.anchors()
        while frame is not None:
            if id(frame) in anchors:
                return True
            frame = frame.f_back
        return False

    def anchors(self):
        """The ids of the open sections' anchor frames (read: safe without the lock)."""
        return {id(section.frame) for stack in list(self.stacks.values())
                for section in list(stack)}

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
