"""``long_section``: declare long work, as a context manager or a decorator.

Outside a heartworker worker (tests, ``flask run``, a script, the arbiter
with ``--preload``) there is no active registry and a section is a cheap
no-op.
"""

import functools
import inspect
import sys

from .settings import check_cap

_active = None   # the worker process's Registry, set by the worker once it serves


def activate(registry):
    global _active
    _active = registry


class SectionCapExceeded(BaseException):
    """Raised inside a section whose deadline passed while its greenlet was waiting (gevent).

    Like ``gevent.Timeout`` and trio's ``Cancelled`` it derives from
    BaseException, so that ``except Exception`` in application code does not
    swallow it.  A section that keeps running anyway gets the worker aborted.
    """


class long_section:
    """Declare that the code inside may run longer than Gunicorn's ``--timeout``.

    ``name`` appears in logs; ``cap`` is the hard cap in seconds (default: the
    ``HEARTWORKER_SECTION_CAP`` setting).  Sections nest; a nested section's
    deadline is never later than its enclosing one's.

        with long_section("load model", cap=3600):
            model = load()

        @long_section("export report", cap=300)
        def export(): ...

    A ``long_section`` object is entered at most once at a time; as a
    decorator it makes a fresh section for every call, so decorated functions
    are safe to call concurrently and recursively.
    """

    __slots__ = ("name", "cap", "_open")

    def __init__(self, name=None, *, cap=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"long_section name must be a str, not {type(name).__name__}")
        self.name = name
        self.cap = cap if cap is None else check_cap(cap)
        self._open = None

    def __enter__(self):
        registry = _active
        if registry is not None:
            if self._open is not None:
                raise RuntimeError("this long_section is already entered; make a new one")
            self._open = registry.enter(self.name, self.cap, sys._getframe(1))
        return self

    def __exit__(self, exc_type, exc, tb):
        section = self._open
        if section is not None:
            self._open = None
            section.registry.exit(section)
        return False

    def __call__(self, func):
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError("long_section decorates plain (sync) functions only")
        name = self.name or func.__qualname__
        cap = self.cap

        @functools.wraps(func)
        def in_section(*args, **kwargs):
            with long_section(name, cap=cap):
                return func(*args, **kwargs)

        return in_section

    def __repr__(self):
        return f"long_section({self.name!r}, cap={self.cap!r})"
