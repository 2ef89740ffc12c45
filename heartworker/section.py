"""``long_section``: declare long work, as a context manager or a decorator.

Outside a heartworker worker (tests, ``flask run``, a script, the arbiter
with ``--preload``) there is no active registry and a section is a cheap
no-op.
"""

import contextlib
import functools
import inspect
import os
import sys

from .deadline import INF, Section
from .settings import MAX_SECONDS, check_cap, check_stall

_getframe = sys._getframe
_active = None   # the worker process's Registry, set by the worker once it serves
_OUTSIDE = object()   # the "open section" of a long_section entered where nothing vouches
# Frames between the code that runs a with-body and long_section.__enter__: see anchor().
_ENTER_CONTEXT = contextlib.ExitStack.enter_context.__code__
_CONTEXTMANAGER_ENTER = contextlib._GeneratorContextManager.__enter__.__code__
_ENTER_ASYNC_CONTEXT = contextlib.AsyncExitStack.enter_async_context.__code__
_ASYNC_CONTEXTMANAGER_ENTER = contextlib._AsyncGeneratorContextManager.__aenter__.__code__
_HELPERS = (_CONTEXTMANAGER_ENTER, _ASYNC_CONTEXTMANAGER_ENTER)
_ENTERS = ("__enter__", "__aenter__")
_GENERATOR = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def activate(registry):
    global _active
    _active = registry


def _forked():
    """In a forked child (a multiprocessing pool, a plain fork): sections are no-ops."""
    global _active
    registry, _active = _active, None
    if registry is not None:
        registry.forked()


os.register_at_fork(after_in_child=_forked)


def anchor(frame):
    """The frame whose presence on the stack means "running inside this section".

    It is the frame that runs the body of the ``with`` statement.  Usually
    that is the frame that called ``long_section.__enter__``; when a helper
    enters the section for it, the helper's frames are skipped:

    * a frame named ``__enter__`` or ``__aenter__`` (a class-based context
      manager that enters a ``long_section`` in its own, ``async with
      long_section()`` itself), ``ExitStack.enter_context`` and
      ``AsyncExitStack.enter_async_context``;
    * a generator frame run by contextlib's ``_GeneratorContextManager.__enter__``
      (or an async generator run by ``_AsyncGeneratorContextManager.__aenter__``):
      the body of a ``@contextmanager`` (``@asynccontextmanager``) helper,
      suspended at its ``yield`` while the user's ``with`` body runs.  Any
      other generator is its own anchor (it covers nothing between its
      resumptions).

    Skipping is safe: the caller of a helper is on the stack for as long as
    the helper is, so a section never covers less than its own code, and
    every vouch is still bounded by the section's deadline.

    ``long_section.__enter__`` makes this loop's first tests inline (the
    usual caller is its own anchor): keep the two in step.
    """
    while True:
        code = frame.f_code
        if code.co_name in _ENTERS or code is _ENTER_CONTEXT or code is _ENTER_ASYNC_CONTEXT:
            back = frame.f_back
        elif code.co_flags & _GENERATOR:
            back = frame.f_back
            if back is not None and back.f_code not in _HELPERS:
                return frame
        else:
            return frame              # the usual case: f_back is never touched
        if back is None:
            return frame
        frame = back


class SectionCapExceeded(BaseException):
    """Raised inside a section at its deadline: the section is cancelled, the worker lives.

    Like mod_wsgi's ``RequestTimeout``, trio's ``Cancelled`` and
    ``KeyboardInterrupt``, it derives from BaseException, so that ``except
    Exception`` in application code (and Flask's or Django's error handlers)
    does not swallow it; ``finally`` blocks and context managers run.  The
    worker answers the request with ``504 Gateway Timeout``.  A section still
    running ``HEARTWORKER_CANCEL_GRACE`` seconds later gets the worker aborted.
    """


def long_section(name=None, *, cap=None, stall=None, cancel=True):
    """Declare that the code inside may run longer than Gunicorn's ``--timeout``.

    ``name`` appears in logs; ``cap`` is the hard cap in seconds (default: the
    ``HEARTWORKER_SECTION_CAP`` setting).  ``stall`` (seconds, at most ``cap``)
    is the longest the section may go without reporting progress
    (:meth:`progress`, or :func:`progress`); the first window starts at
    entry.  At its deadline (the cap, or the stall limit) the section is
    cancelled (:class:`SectionCapExceeded` is raised inside it); with
    ``cancel=False`` the worker is aborted instead, as for a section that
    does not end after its cancellation.  Sections nest; a nested section's
    deadline is never later than its enclosing one's.

        with long_section("load model", cap=3600, stall=120) as section:
            for shard in shards:
                load(shard)
                section.progress(f"shard {shard}")

        @long_section("export report", cap=300)
        def export(): ...

    It returns a :class:`LongSection`, which is entered at most once at a
    time, in a worker or not; as a decorator it makes a fresh section for
    every call, so decorated functions are safe to call concurrently and
    recursively.  In a worker, a ``LongSection`` is itself the record of the
    open section (a :class:`~heartworker.deadline.Section`) the first time it
    is entered, and a fresh record is made for each later entry (the guard may
    still hold the first one); its ``cap`` then says the default cap's value
    if it was None.
    """

    if type(name) is not str and name is not None and not isinstance(name, str):
        raise TypeError(f"long_section name must be a str, not {type(name).__name__}")
    if cap is not None:           # (check_cap's usual cases, inline: this runs on every `with`)
        kind = type(cap)
        if kind is int and 0 < cap <= MAX_SECONDS:
            cap = float(cap)
        elif kind is not float or not 0 < cap <= MAX_SECONDS:
            cap = check_cap(cap)
    section = LongSection()       # (this function is its __init__: a class's costs more)
    section.name = name
    section.cap = cap
    if stall is not None:
        kind = type(stall)
        if (kind is float or kind is int) and 0 < stall <= (MAX_SECONDS if cap is None else cap):
            stall = float(stall)
        else:
            stall = check_stall(stall, cap)
    section.stall = stall
    section.cancel = cancel is True or bool(cancel)
    section._open = section.registry = None
    return section


class LongSection(Section):
    """A section declared by :func:`long_section` (made only by it): a context manager
    and a decorator."""

    __slots__ = ("_open",)
    __init__ = object.__init__    # (made by long_section(): see there)

    def __enter__(self):
        if self._open is not None:
            raise RuntimeError("this long_section is already entered; make a new one")
        registry = _active
        if registry is None:
            self._open = _OUTSIDE
        else:
            caller = _getframe(1)
            code = caller.f_code       # (anchor()'s first test, inline: usually the caller)
            where = anchor(caller) if code.co_flags & _GENERATOR or code.co_name == "__enter__" \
                or code is _ENTER_CONTEXT or code is _AENTER else caller
            if self.registry is None:  # (claimed in one step, with no call in between:
                self.registry = registry   # two threads never both take it)
                record = self
            else:
                record = Section(registry, self.name, self.cap, INF, None, None, 0.0,
                                 self.cancel, self.stall)
            self._open = record if registry.add(record, where) else _OUTSIDE
            if registry.cancel_waits:     # it came during the update: raise it here,
                try:                      # before the `with` body (which will not run)
                    registry.land(caller)
                except SectionCapExceeded:
                    self.__exit__(None, None, None)
                    raise
        return self

    def __exit__(self, exc_type, exc, tb):
        section = self._open
        self._open = None
        if section is not _OUTSIDE and section is not None:
            registry = section.registry
            registry.exit(section)
            if registry.cancel_waits:     # it came during the update: raise it here
                registry.land(sys._getframe(1))
            if exc_type is not None and section.why is not None:
                registry.leave_cancelled(section, exc)   # (an asyncio task's: tasks.py)
        return False

    async def __aenter__(self):
        """``async with long_section(...)``: the task that enters it owns the section (and
        a thread it hands work to works for it: the uvicorn worker's ``lent.py``)."""
        entered = self.__enter__()
        if self._open is not _OUTSIDE:
            self._open.registry.entered_async()
        return entered

    async def __aexit__(self, exc_type, exc, tb):
        return self.__exit__(exc_type, exc, tb)

    def progress(self, note=None):
        """Report progress in this section (and the ones enclosing it): see :func:`progress`."""
        section = self._open
        if section is not None and section is not _OUTSIDE:
            section.registry.progress(note, section)

    def __call__(self, func):
        """A function (or an ``async def``) that runs each call in a fresh section.  Its
        signature is the function's (``functools.wraps``: FastAPI reads it)."""
        if inspect.isasyncgenfunction(func):
            raise TypeError("long_section does not decorate async generators (a section "
                            "open between their resumptions covers nothing): enter it "
                            "inside the generator instead")
        name, cap, stall, cancel = self.name or func.__qualname__, self.cap, self.stall, self.cancel

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def in_async_section(*args, **kwargs):
                async with long_section(name, cap=cap, stall=stall, cancel=cancel):
                    return await func(*args, **kwargs)

            return in_async_section

        @functools.wraps(func)
        def in_section(*args, **kwargs):
            with long_section(name, cap=cap, stall=stall, cancel=cancel):
                return func(*args, **kwargs)

        return in_section

    def __repr__(self):
        return (f"long_section({self.name!r}, cap={self.cap!r}, stall={self.stall!r}, "
                f"cancel={self.cancel!r})")


def progress(note=None):
    """Report progress for the innermost open section of the calling code.

    The serving thread's (under gevent, the current greenlet's) innermost
    section and every section enclosing it count it: each one's stall window
    starts again, and ``note`` (a short str, e.g. ``"shard 4/10"``) is what
    the report lines, the process title and a stall's log line show.  A
    cheap no-op outside sections, outside a worker, and in other threads.
    """
    registry = _active
    if registry is not None:
        registry.progress(note)


_AENTER = LongSection.__aenter__.__code__   # (its caller of __enter__: see anchor())
