"""Threads lent to tasks: a ``def`` endpoint in a thread pool owns its sections.

Starlette and FastAPI run a ``def`` endpoint (and a ``def`` dependency) in anyio's
thread pool; ``anyio.to_thread.run_sync`` and ``asyncio.to_thread`` do the same for
any blocking call.  Each runs the call with a copy of the awaiting task's context.
So a thread that sees :data:`LENDER` set runs work *lent* by a task of the worker's
loop (the uvicorn worker sets it on the loop before it serves, and each request's
task sets it to itself: ``asgi.py``).

While such a thread is inside its own sections it is registered as the threaded
worker's request threads are (``requests.py``): it owns its sections, the guard
sees whether its code runs inside them, and at a section's deadline the
cancellation is raised in the thread (``PyThreadState_SetAsyncExc``, as in
``threads.py``: at its next bytecode, or when a blocking call returns).  The
exception leaves the ``def`` endpoint, the awaiting task gets it, and its client
the ``504``.  The registration ends with the thread's last section.  Its progress
(:func:`heartworker.progress`), in a section or not, also counts for the sections
of the task that lent it (and for the startup's).

A thread the app starts itself (``threading.Thread``; an executor given to
``loop.run_in_executor``, which does not copy the context) runs without the
variable, and a thread that runs an event loop of its own (``asyncio.run`` in a
``def`` endpoint) is not lent: their sections vouch for nothing, as an app's own
thread's do in the other workers.
"""

import contextvars
import threading
from asyncio import _get_running_loop
from time import monotonic

from .deadline import INF, Request

# A task's work runs in this thread (True: the loop's, no request's; a task: that one's).
LENDER = contextvars.ContextVar("heartworker_lender", default=None)
NOT_LENT = object()     # lender(): the thread runs no task's work


class LentThread(Request):
    """A thread lent to a task, registered while it is inside its own sections.

    Its own deadline is never due (its sections' are); ``lender`` is the task it
    works for (None: the loop's startup), whose request waits on it.
    """

    __slots__ = ("lender",)
    kind = "thread"
    lent = True

    def __init__(self, registry, name, owner, lender):
        super().__init__(registry, name, INF, owner, None, monotonic())
        self.lender = lender


def lender():
    """Whose sections the calling thread's work is for: a task, None (the loop's), or
    ``NOT_LENT`` (the thread runs no task's work)."""
    lender = LENDER.get()
    if lender is None:
        return NOT_LENT
    return None if lender is True else lender


def lend(registry, forget, ident):
    """Register the calling thread (``ident``) as lent, if it runs a task's work: True if
    it now owns its sections.  Called by the registry as the thread opens its first;
    ``forget(ident)`` drops what the guard noted of the thread's last registration."""
    owner = lender()
    if owner is NOT_LENT or _get_running_loop() is not None:
        return False              # (a loop of its own, asyncio.run() in a def endpoint: not ours)
    thread = LentThread(registry, threading.current_thread().name, ident, owner)
    with registry.region() as held:
        if held:
            forget(ident)
            registry.requests[ident] = thread
    return held
