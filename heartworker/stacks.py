"""Where was it stuck?  Stacks for the log, including when no Python thread can run.

* :func:`format_stack` formats a frame's stack with ``traceback`` for the
  guard's CRITICAL log line.
* :class:`AbortDump` enables ``faulthandler``, whose C-level handlers for
  the fatal signals (SIGABRT among them) print every thread's Python stack
  and then re-raise the signal to the handler that was there before.  It
  runs even while C code holds the GIL, so when the arbiter's SIGABRT arrives
  (at the latest at the standing vouch + ``--timeout``) the log shows where
  the worker was stuck although ``handle_abort`` cannot run yet.  The
  previous handler is Gunicorn's, so ``worker_abort`` hooks still run
  whenever Python can.
"""

import faulthandler
import logging
import os
import sys
import traceback


def format_stack(frame, limit=60):
    if frame is None:
        return "  (no Python frame)\n"
    return "".join(traceback.format_stack(frame, limit=limit))


def error_stream(log):
    """The stream behind Gunicorn's error log, if it is a file; else stderr."""
    for handler in getattr(getattr(log, "error_log", None), "handlers", ()):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream is not None:
            try:
                stream.fileno()
            except (AttributeError, OSError, ValueError):
                continue
            return stream
    return sys.stderr


class AbortDump:
    """faulthandler's stack dump on SIGABRT (and crashes), kept pointed at the error log."""

    def __init__(self, log):
        self.log = log
        self.stream = None
        self.file = None

    def enable(self):
        """Call after Gunicorn installed its SIGABRT handler, so that we chain to it."""
        self.refresh(force=True)

    def refresh(self, force=False):
        """Follow the error log if it was reopened (USR1); cheap when it was not."""
        stream = error_stream(self.log)
        if stream is self.stream and not force:
            return
        try:
            # Our own descriptor: the log handler may close and reopen its own.
            file = os.fdopen(os.dup(stream.fileno()), "w", closefd=True)
            faulthandler.enable(file=file, all_threads=True)
        except (OSError, ValueError, AttributeError, RuntimeError) as exc:
            self.log.warning("heartworker: no stack dump on SIGABRT: %s", exc)
            return
        old, self.file, self.stream = self.file, file, stream
        if old is not None:
            old.close()

    def disable(self):
        """Before heartworker aborts the worker itself (it logs the stack already)."""
        faulthandler.disable()
