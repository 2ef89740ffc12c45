"""A section as a value: when it must end, with written semantics.

trio's ``CancelScope`` is the model: a deadline is a value, not a timer.  An
open section knows its own deadline; nothing fires by itself.  The guard reads
``due()`` and acts when it has passed (``guard.py``); the standing vouch is
derived from the same values (``vouching.py``).

* ``started + cap`` is the cap's deadline; a nested section is *clipped* to the
  enclosing one's when that comes first (it never outlives it).
* The stall deadline is the owner's last progress (or the entry) plus
  ``stall``; progress moves it later, never past the cap.
* The graceful limit (SIGTERM + ``--graceful-timeout``, less a little) bounds
  every deadline of the worker from the moment it is set.
* The earliest of the three is the section's deadline, whatever it ends at; at
  it the section is cancelled (``cancel=True``) or the worker aborted.

A :class:`Request` is the threaded worker's request seen the same way:
``--timeout`` after it was last outside every section.
"""

import math

INF = math.inf


class Section:
    """One open section: a value with a deadline.

    ``deadline`` is absolute (``time.monotonic()``): ``started + cap``, or the
    enclosing section's deadline if that comes first (then ``bound`` is the
    outermost section whose deadline it is).  Two more bounds may bring it
    nearer (see :meth:`due`): the *stall* deadline
    ``stall_at``, which is the last progress (or the entry) plus ``stall``
    and moves later at each progress; and the registry's graceful ``limit``.
    The earliest of the three is the section's deadline, whatever it ends at.
    ``frame`` is the *anchor*: the frame whose presence on the owner's stack
    means "running inside this section" (see ``section.anchor``).
    """

    # The fields every section sets as it opens are slots; the guard's, which most
    # sections never set, are class defaults (an instance __dict__ is made only
    # when one is set), so that opening a section stores no more than it must.
    __slots__ = ("registry", "name", "cap", "deadline", "owner", "frame", "started", "in_heap",
                 "closed", "bound", "cancel", "stall", "__dict__")
    code = None           # the anchor's code, kept for describe() if the section has no name
    why = None            # the cancellation's message, once the guard cancels it
    delivered = False     # when its exception was delivered (once): a waiting greenlet's
    #                       throw, a request thread's async raise
    thrown = 0            # gevent: the number of the hub callback that first threw its
    #                       cancellation (0: none; see GeventFlavor.escalates)

    def __init__(self, registry, name, cap, deadline, owner, frame, started, cancel=True,
                 stall=None):
        self.registry = registry
        self.name = name
        self.cap = cap
        self.deadline = deadline
        self.owner = owner
        self.frame = frame
        if name is None and frame is not None:
            self.code = frame.f_code
        self.started = started
        self.in_heap = False
        self.closed = False
        self.bound = None
        self.cancel = cancel      # False: its deadline aborts the worker instead
        self.stall = stall        # longest time without progress (None: no limit)

    # Progress is its owner's (see stalls.Progress.progress): read it from there.
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

    def due(self, limit=INF):
        """When it must end: the earliest of its (clipped) cap, its stall deadline and
        ``limit`` (the registry's graceful limit)."""
        if self.stall is None:
            return min(self.deadline, limit)
        return min(self.deadline, self.stall_at, limit)

    def stalled(self, limit=INF):
        """Is it the stall limit (rather than the cap or ``limit``) that ends it?"""
        return self.stall is not None and self.stall_at <= min(self.deadline, limit)

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
    """A request seen as a deadline: its limit outside sections (requests.py).

    Its deadline is ``cap`` (``--timeout`` or ``HEARTWORKER_REQUEST_TIMEOUT``) after
    it was last outside every section: its start, or the end of its owner's last
    outermost section; while its owner is inside a section it has none (the
    section's deadline applies).  It is never on a stack: it clips nothing.
    """

    __slots__ = ()
    kind = "request"
    lent = False            # a thread lent to a task, while inside its sections: lent.py
    waits = None            # (a lent thread's: the request's task whose limit waits on it)
    sending_noted = False   # past its limit while Gunicorn sent its response: logged once

    def __init__(self, registry, name, cap, owner, frame, started):
        super().__init__(registry, name, cap, started + cap, owner, frame, started)


def stall_bound(stack, deadline, last):
    """``deadline`` (the innermost's, clipped to the enclosing caps), or an earlier
    stall deadline of the stack: a GIL-holding call must not outlive a stall.

    ``last`` is the stack's owner's last progress ``(monotonic, note)``, or None:
    each section's ``stall_at``, computed here without its properties (this runs as
    a section opens)."""
    progress = -INF if last is None else last[0]
    for each in stack:
        stall = each.stall
        if stall is not None:
            at = (each.started if each.started > progress else progress) + stall
            if at < deadline:
                deadline = at
    return deadline
