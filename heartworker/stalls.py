"""Progress and stall limits: an owner's beat moves its sections' stall deadlines and the vouch they bound.

A part of the registry.  ``heartworker.progress()`` (and ``LongSection.progress``)
records the time per owner (``progressed``): every open section of that owner
counts it, and with a stall limit its stall deadline moves to now + ``stall``
(``deadline.py``: ``Section.due``).  The hot path reads ``progressed`` only
while a section with a stall limit is open (``stalls``).
"""

import sys
from time import monotonic


class Progress:
    """An owner's progress (a part of the registry)."""

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
        The serving thread's sections (the startup's) count an owner's progress
        too: they enclose all the work (the uvicorn worker's lifespan task); so do
        the sections of the tasks that a thread pool's thread works for (``lent.py``).
        """
        ident = self.get_ident()
        if not self.enabled:
            return
        lending = None if ident == self.tid else self.lending()   # (a thread's: lent.py)
        if ident == self.tid or ident in self.requests:
            owners = [section.owner if section is not None else (
                self.owner() if self.owner is not None else None)]
        elif lending is None:
            return
        else:
            owners = []               # (a lent thread outside its own sections)
        if lending is not None:
            owners += lending
        with self.region() as held:   # (not held: a finalizer or handler, mid-update here)
            if held:
                for owner in owners:
                    self._progress(owner, note)
                if None not in owners and None in self.stacks:
                    self._progress(None, note)
        if self.cancel_waits:     # (frames: this, long_section's or the module's progress)
            self.land(sys._getframe(2))

    def _progress(self, owner, note):
        stack = self.stacks.get(owner)
        if stack:
            self.progressed[owner] = (monotonic(), note)
            if self.stalls:
                self._stand(self._standing_after(owner, stack))
