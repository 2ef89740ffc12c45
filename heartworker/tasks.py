"""The asyncio flavour: each task owns its sections (the uvicorn worker, ``uvicorn.py``).

One thread runs the event loop; a task's code runs on it between two awaits.
So, as under gevent, where the loop thread is right now is where the running
task is, and a section counts while its anchor frame is on that stack; a task
waiting at an ``await`` inside a section is suspended in its coroutines, and its
code resumes only when the loop runs it again.  The guard learns whether the
loop is free with a numbered callback (``probe.py``).

At a section's deadline:

* the task is waiting: ``task.cancel()``, posted to the loop thread-safely.
  Its code sees ``CancelledError`` at the ``await`` (as asyncio code expects:
  ``finally`` blocks and ``async with`` exits run), and the section, as it is
  left, turns it into :class:`~heartworker.SectionCapExceeded` and takes the
  task's cancellation back (``Task.uncancel``): like trio's cancel scope, the
  cancellation belongs to the section, and the code outside it sees the
  section's exception, which the ASGI wrapper answers with a ``504``;
* the task blocks the loop (CPU-bound code, a blocking call, in an ``async
  def``): the cancellation signal to the loop thread raises
  ``SectionCapExceeded`` where it runs, as in the sync worker.

Before the loop runs (the app's import), the loop thread is the one owner, as
in every worker's startup (``worker.py``); the startup section stays the loop
thread's until it closes, and the lifespan's task owns the sections it opens.

A thread pool's thread that runs a task's work (a ``def`` endpoint) owns its
sections as the threaded worker's request threads do (``lent.py``): its owner is
its thread ident, and the guard deals with it as the threaded worker's flavour does
(``threads.py``).
"""

import asyncio
import functools
import inspect

from . import native
from .flavor import SyncFlavor
from .lent import LOOP, REQUEST, SECTION_TASK, lend, lending
from .probe import LoopProbe
from .section import SectionCapExceeded
from .threads import ThreadFlavor, a_thread_inside

_current_task = asyncio.current_task
_get_ident = native.native_get_ident()
_COROUTINE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def task_owner():
    """The asyncio task running now (None outside one: a callback, no running loop)."""
    try:
        return _current_task()
    except RuntimeError:
        return None


def owner_in(loop_thread):
    """The flavour's ``owner()`` once the loop runs: on the loop thread, the task running
    now (None outside a task: a callback, the loop closed); in any other thread, the
    thread's ident (a thread lent to a task: ``lent.py``), whatever loop it may run."""
    def section_owner():
        ident = _get_ident()
        if ident != loop_thread:
            return ident
        try:
            return _current_task()
        except RuntimeError:          # the loop has closed
            return None
    return section_owner


_get_section_task, _set_section_task = SECTION_TASK.get, SECTION_TASK.set


def entered_async_section():
    """An ``async with long_section()`` was entered: the threads its task hands work to
    from now on work for that task (``lent.py``).  (A context variable's ``set`` costs
    about 0.4 us: once per task, not per section.)"""
    task = _current_task()
    if _get_section_task() is not task:
        _set_section_task(task)


def runs_a_task(frame):
    """Is ``frame``'s stack (the loop thread's) running a coroutine: a task's code?"""
    while frame is not None:
        if frame.f_code.co_flags & _COROUTINE:
            return True
        frame = frame.f_back
    return False


def lent(owner):
    """Is ``owner`` a thread lent to a task (a thread ident), not a task?"""
    return type(owner) is int


def coroutine_frames(task):
    """The frames of a suspended ``task``, outermost first (where each coroutine awaits)."""
    try:
        awaitable = task.get_coro()
    except AttributeError:
        return
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) \
            or getattr(awaitable, "ag_frame", None)
        if frame is None:
            return
        yield frame
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom",
                                                                    None) \
            or getattr(awaitable, "ag_await", None)


class TaskFlavor(LoopProbe):
    """Owners are asyncio tasks; the loop is probed; a waiting task is cancelled alone."""

    retires = False   # the backstop aborts the worker

    def __init__(self):
        super().__init__()
        self.owner = None         # the loop thread, until attach() (see the module docstring)
        self.loop = None
        self.threads = ThreadFlavor()     # the lent threads' (lent.py)

    def attach(self, registry, loop):
        """``loop`` runs (call on it, in its main task): its tasks own the sections they
        open from now on, and the threads that run their work own theirs."""
        self.loop = loop
        self.owner = owner_in(registry.tid)
        registry.adopt(self.owner, keep=True)
        registry.leave_cancelled = self.leave_cancelled
        registry.lend = functools.partial(lend, registry, self.threads.forget)
        registry.lending = lending
        registry.entered_async = entered_async_section
        REQUEST.set(LOOP)         # (the loop's own work, the startup's: every task copies it)

    def post(self, callback, *args):
        self.loop.call_soon_threadsafe(callback, *args)

    def loop_seen(self, now):
        if self.loop is None or self.loop.is_closed():
            return None            # (no loop yet: the startup section vouches)
        return super().loop_seen(now)

    def running_inside(self, registry, frame, loop_seen):
        """Is the loop thread (its current ``frame``) running code inside an open section,
        or, while the loop is silent although it runs no task, a lent thread that has
        run since the last look?

        A lent thread that holds the GIL inside its section keeps the loop from
        answering: the standing vouch must stand then (the threaded worker's rule,
        ``threads.py``).  Not when the loop thread runs a task's code outside sections
        (that task blocks the loop: stock's kill at ``--timeout``), nor for a lent
        thread that has not run (asleep in its section: the GIL is another's)."""
        anchors = registry.anchors()
        if registry.inside(frame, anchors):
            return True
        if loop_seen is not None or not registry.lent_threads or runs_a_task(frame):
            return False
        return a_thread_inside(registry, anchors,
                               lambda owner: lent(owner) and self.threads.has_run(owner))

    @staticmethod
    def sending(request):
        """(Requests are not deadlines of this worker's: its request limit is its own.)"""
        return False

    def interrupt(self, guard, section, running):
        owner = section.owner
        if lent(owner):
            self.threads.interrupt(guard, section, running)
        elif running or owner is None:    # it blocks the loop: interrupt it there
            guard.signal_serving_thread()
        else:
            self.post_cancel(section, self._cancel, guard, owner)

    def escalates(self, section, running):
        if not lent(section.owner):
            return super().escalates(section, running)
        if not section.registry.inside_section(self.threads.frame_of(section), section):
            # Its exception left the section (a lent thread has no request's end that
            # closes what it left open: ThreadWorker.request_over): nothing to escalate.
            section.registry.drop(section, 0)
            return False
        return self.threads.escalates(section, running)

    def stock_would_kill(self, guard, section, now):
        return not lent(section.owner) and super().stock_would_kill(guard, section, now)

    @staticmethod
    def _cancel(guard, task):               # runs in the loop
        if task.done():
            return
        why = guard.take_cancellation(task)
        if why is not None:
            task.cancel(why)

    @staticmethod
    def leave_cancelled(section, exc):
        """``section``, cancelled by a ``task.cancel()`` of ours, is left with ``exc``:
        raise its :class:`SectionCapExceeded` instead of the ``CancelledError``, and
        take the task's cancellation back (the task was not cancelled: its section was)."""
        if not isinstance(exc, asyncio.CancelledError) or not section.delivered:
            return
        task = section.owner
        uncancel = getattr(task, "uncancel", None)    # (Python 3.11+)
        if uncancel is not None and task.cancelling():
            uncancel()
        raise SectionCapExceeded(section.why)

    @staticmethod
    def request_context():
        """Where the current request's response is noted: its task."""
        return task_owner()

    def frame_of(self, section):
        """Where a waiting section's task is suspended: its coroutines' frames (a list,
        for the log: ``stacks.format_stack``); a lent thread's current frame."""
        owner = section.owner
        if lent(owner):
            return self.threads.frame_of(section)
        return list(coroutine_frames(owner)) if owner is not None else None

    def waiting_frame(self, section):
        """The section's anchor, if its task is suspended inside it (else None: done, or
        it left the section's code open in a suspended async generator); a lent
        thread's current frame."""
        task = section.owner
        if lent(task):
            return self.threads.frame_of(section)
        if task is None or task.done():
            return None
        for frame in coroutine_frames(task):
            if frame is section.frame:
                return frame
        return None

    frames_at_abort = staticmethod(SyncFlavor.frames_at_abort)   # (the loop-blocking task)

