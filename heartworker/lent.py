"""Threads lent to tasks: a ``def`` endpoint in a thread pool owns its sections.

Starlette and FastAPI run a ``def`` endpoint (and a ``def`` dependency) in anyio's
thread pool; ``anyio.to_thread.run_sync`` and ``asyncio.to_thread`` do the same for
any blocking call.  Each runs the call with a copy of the awaiting task's context.
So a thread that sees :data:`LENDER` runs work *lent* by a task of the worker's
loop.  What it sees is a :class:`Lending`, set in the loop's contexts:

* by the uvicorn worker on its loop before it serves (no task: the startup's work);
* by each ``async with long_section()`` (so ``@long_section`` on an ``async def``)
  in its task's context: the task that opened it;
* by the ASGI wrapper when a route cap or the request limit applies: the request's
  task, whose limit then waits while a thread works for it inside a section.

While such a thread is inside its own sections it is registered as the threaded
worker's request threads are (``requests.py``): it owns its sections, the guard
sees whether its code runs inside them, and at a section's deadline the
cancellation is raised in the thread (``PyThreadState_SetAsyncExc``, as in
``threads.py``: at its next bytecode, or when a blocking call returns).  The
exception leaves the ``def`` endpoint, the awaiting task gets it, and its client
the ``504``.  The registration ends with the thread's last section.  Its progress
(:func:`heartworker.progress`), in a section or not, also counts for the sections
of the tasks its Lending names (and for the startup's).

A thread the app starts itself (``threading.Thread``; an executor given to
``loop.run_in_executor``, which does not copy the context) runs without the
variable, and a thread that runs an event loop of its own (``asyncio.run`` in a
``def`` endpoint) is not lent: their sections vouch for nothing, as an app's own
thread's do in the other workers.
"""

import contextvars
import threading
from time import monotonic

from .deadline import INF, Request


class Lending:
    """Whose work a thread runs, as the context it was handed tells it.

    ``task``: the task whose section the work is for (the one that opened the
    innermost ``async with long_section()`` around it, or the request's task);
    ``request``: the task of the HTTP request whose limit waits on it (None: no
    request limit or route cap, or the startup's work).  Both None: the loop's own.
    """

    __slots__ = ("task", "request")

    def __init__(self, task=None, request=None):
        self.task = task
        self.request = request

    def owners(self):
        """The tasks whose sections the thread's progress counts for."""
        task, request = self.task, self.request
        if task is None:
            return () if request is None else (request,)
        return (task,) if request is None or request is task else (task, request)


# A Lending in the contexts of the worker's loop, and so in the threads they hand work to.
LENDER = contextvars.ContextVar("heartworker_lender", default=None)


def lending_from(task, request=False):
    """Set the Lending of the calling task's context: it is ``task``'s work, part of
    ``request``'s (False: the request the context already names)."""
    if request is False:
        outer = LENDER.get()
        request = None if outer is None else outer.request
    LENDER.set(Lending(task, request))


class LentThread(Request):
    """A thread lent to a task, registered while it is inside its own sections.

    Its own deadline is never due (its sections' are); ``waits`` is the request's
    task whose limit waits on it (None: none).
    """

    __slots__ = ("lending",)
    kind = "thread"
    lent = True

    def __init__(self, registry, name, owner, lending):
        super().__init__(registry, name, INF, owner, None, monotonic())
        self.lending = lending

    @property
    def waits(self):
        return self.lending.request


def lend(registry, forget, ident):
    """Register the calling thread (``ident``) as lent, if it runs a task's work: True if
    it now owns its sections.  Called by the registry as the thread opens its first;
    ``forget(ident)`` drops what the guard noted of the thread's last registration."""
    from asyncio import _get_running_loop     # (in the uvicorn worker only: asyncio is there)
    lending = LENDER.get()
    if lending is None or _get_running_loop() is not None:
        return False              # (a loop of its own, asyncio.run() in a def endpoint: not ours)
    thread = LentThread(registry, threading.current_thread().name, ident, lending)
    with registry.region() as held:
        if held:
            forget(ident)
            registry.requests[ident] = thread
    return held
