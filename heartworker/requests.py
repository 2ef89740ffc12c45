"""Requests as deadlines, and the threaded worker's owners: request threads.

A request is itself a deadline (``deadline.Request``): its limit after it was
last outside every section, none while its owner is inside one.  In the
threaded worker every request is one (``--timeout``, or
``HEARTWORKER_REQUEST_TIMEOUT``), and besides the serving (main) thread, a
request thread may open sections while it serves a request.  In the sync and
gevent workers a request is one only with ``HEARTWORKER_REQUEST_TIMEOUT``; its
owner is the serving thread's or its greenlet.
"""

from time import monotonic

from .deadline import INF, Request
from .regions import release_frames


class Requests:
    """The requests in flight (``requests``: thread ident -> Request), a part of the registry."""

    # -- the threaded worker's requests ------------------------------------------
    def inside_sections(self, owner):
        """``owner`` opened its first section: its request's deadline is its sections'
        (a lent thread's: the request it works for waits on it)."""
        request = self.requests.get(owner)
        if request is not None:
            request.deadline = INF
            waiting = self.requests.get(request.waits) if request.waits is not None else None
            if waiting is not None:
                waiting.deadline = INF

    def outside_sections(self, owner):
        """``owner`` closed its last section: its request has its limit again, from now (a
        lent thread is no longer registered, and the request it worked for has its own
        limit again)."""
        request = self.requests.get(owner)
        if request is not None and request.lent:
            del self.requests[owner]
            self.lent_threads -= 1
            request.closed = True
            owner = request.waits
            if owner is None or owner in self.stacks:
                return
            request = self.requests.get(owner)
        if request is None or self.lent_threads and any(
                other.lent and other.waits is owner for other in self.requests.values()):
            return                        # (a thread that works for it is inside a section)
        request.deadline = monotonic() + request.cap

    def request_begins(self, name, frame, cap):
        """The calling owner serves a request (``frame`` runs it) until request_done."""
        owner = self.owner() if self.owner is not None else None
        request = Request(self, name, cap, owner, frame, monotonic())
        with self.region() as held:
            if held:
                self.requests[request.owner] = request
        if request.deadline < self.next_wake:
            self.ring()
        return request

    def request_done(self, request, clear):
        """The calling owner's request is over: no cancellation may reach it from now on.

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
            release_frames(left)

    def requests_due(self, now):
        """The requests past their deadline that are not being ended yet (call in a region)."""
        return [(r, r) for r in self.requests.values()
                if r.why is None and self.deadline_of(r) <= now]

    def next_request_deadline(self):
        return min((self.deadline_of(r) for r in self.requests.values() if r.why is None),
                   default=INF)
