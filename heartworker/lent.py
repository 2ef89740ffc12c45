"""Threads lent to tasks: a ``def`` endpoint in a thread pool owns its sections.

Starlette and FastAPI run a ``def`` endpoint (and a ``def`` dependency) in anyio's
thread pool; ``anyio.to_thread.run_sync`` and ``asyncio.to_thread`` do the same for
any blocking call.  Each runs the call with a copy of the awaiting task's context.
So a thread that sees :data:`REQUEST` runs work *lent* by a task of the worker's
loop.  Two context variables say whose, set in the loop's contexts:

* ``REQUEST``: ``LOOP``, set by the uvicorn worker on its loop before it serves (the
  startup's work, no request's), or the request's task, set by the ASGI wrapper when
  a route cap or the request limit applies (its limit waits while a thread works for
  it inside a section);
* ``SECTION_TASK``: the task that entered the innermost ``async with long_section()``
  (so ``@long_section`` on an ``async def``) around the work.

While such a thread is inside its own sections it is registered as the threaded
worker's request threads are (``requests.py``): it owns its sections, the guard
sees whether its code runs inside them, and at a section's deadline the
cancellation is raised in the thread (``PyThreadState_SetAsyncExc``, as in
``threads.py``: at its next bytecode, or when a blocking call returns).  The
exception leaves the ``def`` endpoint, the awaiting task gets it, and its client
the ``504``.  The registration ends with the thread's last section.  Its progress
(:func:`heartworker.progress`), in a section or not, also counts for the sections
of those tasks (and for the startup's).

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

LOOP = object()     # REQUEST in the loop's own work (the startup's): no request's
# In the contexts of the worker's loop, and so in the threads they hand work to: the
# task of the HTTP request (set by asgi.py when a route cap or the request limit
# applies), else LOOP; and the task that entered the innermost async section.
REQUEST = contextvars.ContextVar("heartworker_request", default=None)
SECTION_TASK = contextvars.ContextVar("heartworker_section_task", default=None)


def lending():
    """The tasks whose sections the calling thread's work is for (its progress counts for
    them), nearest first: () for the loop's own work; None if it runs no task's work."""
    request = REQUEST.get()
    if request is None:
        return None
    task = SECTION_TASK.get()
    if request is LOOP:
        return () if task is None else (task,)
    return (request,) if task is None or task is request else (task, request)


class LentThread(Request):
    """A thread lent to a task, registered while it is inside its own sections.

    Its own deadline is never due (its sections' are); ``waits`` is the request's
    task whose limit waits on it (None: none).
    """

    __slots__ = ("waits",)
    kind = "thread"
    lent = True

    def __init__(self, registry, name, owner, waits):
        super().__init__(registry, name, INF, owner, None, monotonic())
        self.waits = waits


def lend(registry, forget, ident):
    """Register the calling thread (``ident``) as lent, if it runs a task's work: True if
    it now owns its sections.  Called by the registry as the thread opens its first;
    ``forget(ident)`` drops what the guard noted of the thread's last registration."""
    from asyncio import _get_running_loop     # (in the uvicorn worker only: asyncio is there)
    request = REQUEST.get()
    if request is None or _get_running_loop() is not None:
        return False              # (a loop of its own, asyncio.run() in a def endpoint: not ours)
    thread = LentThread(registry, threading.current_thread().name, ident,
                        None if request is LOOP else request)
    with registry.region() as held:
        if held:
            forget(ident)
            registry.requests[ident] = thread
            registry.lent_threads += 1
    return held
