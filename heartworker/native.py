"""Real OS-thread primitives, even after gevent's ``monkey.patch_all()``.

After patching, ``threading``, ``_thread`` and ``time.sleep`` are greenlet
versions.  The guard must be a real thread that keeps running while the hub is
blocked, so, like gevent's own ``_monitor.py``, it asks gevent for the
originals.  Without gevent in the process these are simply the stdlib's.
"""

import sys

_NAMES = ("start_new_thread", "allocate_lock", "get_ident", "RLock")


def _originals():
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", _NAMES)
    import _thread
    return tuple(getattr(_thread, name) for name in _NAMES)


def start_new_thread(function, args=()):
    return _originals()[0](function, args)


def allocate_lock():
    return _originals()[1]()


def allocate_rlock():
    """A real re-entrant lock (``_thread.RLock``, in C), never gevent's."""
    return _originals()[3]()


def get_ident():
    """The OS thread's identity (never a greenlet's)."""
    return _originals()[2]()


def sleep(seconds):
    """A real sleep of this OS thread (never gevent's)."""
    monkey = sys.modules.get("gevent.monkey")
    real = monkey.get_original("time", "sleep") if monkey is not None else None
    if real is None:
        import time
        real = time.sleep
    real(seconds)


def native_get_ident():
    """Return the un-patched ``get_ident`` function itself, for hot paths."""
    return _originals()[2]
