"""Gunicorn's heartbeat file, read as what it is: a deadline.

The arbiter kills a worker when ``time.monotonic() - mtime > timeout``
(``Arbiter.murder_workers``; ``WorkerTmp.notify`` writes ``monotonic()`` into
the mtime).  So writing ``mtime = t`` means "kill me once ``t + timeout`` has
passed": a worker may vouch for itself *ahead of time*.  Such a vouch needs no
thread and no GIL to stay valid, which is what lets a section survive C code
that holds the GIL for minutes.

That reading holds for Gunicorn >= 22.  Older versions (and any future one
that changes the protocol) are detected by :func:`check_protocol`, and the
worker then falls back to stock behaviour with a warning.
"""

import os
import time

from .settings import MAX_SECONDS


class Heartbeat:
    """Writes the arbiter's view of this worker: the mtime of the heartbeat file.

    It writes through its own duplicate of the file's descriptor: Gunicorn
    closes ``worker.tmp`` while the worker exits, and a write through a
    closed (or reused) descriptor number must never reach another file.
    """

    __slots__ = ("fd",)

    def __init__(self, tmp):
        self.fd = os.dup(tmp.fileno())
        os.set_inheritable(self.fd, False)

    def write(self, when):
        """Tell the arbiter the worker was last alive at ``when`` (may be in the future)."""
        os.utime(self.fd, (when, when))

    def close(self):
        os.close(self.fd)


def check_protocol(tmp):
    """Return None if Gunicorn's arbiter reads ``tmp`` as described above, else why not.

    Checked on the real file: ``notify()`` must write ``monotonic()`` into what
    ``last_update()`` (the arbiter's reading) returns, and a forward value
    written into the mtime must read back unchanged.  Leaves the file notified.
    """
    try:
        fd = tmp.fileno()
        notify, last_update = tmp.notify, tmp.last_update
    except AttributeError as exc:
        return f"WorkerTmp has changed shape ({exc})"
    notify()
    now, seen = time.monotonic(), last_update()
    if abs(seen - now) > 1.0:
        return (f"notify() stores {seen:.1f} where heartworker expects "
                f"time.monotonic() ({now:.1f})")
    # The furthest deadline ever written: a section entered now with the longest cap.
    ahead = now + MAX_SECONDS
    try:
        os.utime(fd, (ahead, ahead))
    except (OSError, OverflowError) as exc:
        return f"the heartbeat file cannot hold a deadline a year ahead ({exc})"
    seen = last_update()
    notify()
    if abs(seen - ahead) > 0.01:
        return ("last_update() does not read back the file's mtime a year ahead "
                f"({seen:.1f} instead of {ahead:.1f})")
    return None
