"""Say so when Gunicorn silently replaced a heartworker worker with its stock gthread one.

Gunicorn runs ``gunicorn.workers.gthread.ThreadWorker`` instead of any worker
class whose name ends in ``SyncWorker`` once ``--threads`` is more than 1
(``Config.worker_class``), so ``-k heartworker.SyncWorker --threads 4`` runs
no heartworker code at all: no startup cap, sections are no-ops, hung
requests are never ended.  ``threads`` often comes from a conf file or
``GUNICORN_CMD_ARGS``, far from the ``-k`` flag.  heartworker cannot run in
that worker, but when the application imports it there (as it does to use
``long_section``), :func:`check` finds the Gunicorn worker (or, with
``--preload``, the arbiter) that is importing it and logs a WARNING through
Gunicorn's logger, once per process.
"""

import sys

ADVICE = ("Gunicorn replaced -k %s with its stock gthread worker because --threads is %d: "
          "heartworker is not running (no startup cap, sections do nothing, hung requests "
          "are never ended). Use -k heartworker.ThreadWorker for threads, or --threads 1.")


def check():
    """Log the WARNING if this import runs under a replaced heartworker worker class."""
    base = sys.modules.get("gunicorn.workers.base")
    arbiter = sys.modules.get("gunicorn.arbiter")
    kinds = tuple(k for k in (getattr(base, "Worker", None), getattr(arbiter, "Arbiter", None))
                  if k is not None)
    if not kinds:
        return
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self") if frame.f_code.co_varnames[:1] == ("self",) else None
        if isinstance(owner, kinds):
            _warn(owner)
            return
        frame = frame.f_back


def _warn(owner):
    cfg, log = getattr(owner, "cfg", None), getattr(owner, "log", None)
    try:
        uri, threads = cfg.settings["worker_class"].get(), int(cfg.threads)
    except (AttributeError, KeyError, TypeError, ValueError):
        return
    if isinstance(uri, str) and uri.startswith("heartworker.") and uri.endswith("SyncWorker") \
            and threads > 1 and log is not None:
        log.warning("heartworker: " + ADVICE, uri, threads)
