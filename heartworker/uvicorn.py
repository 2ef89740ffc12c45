"""``heartworker.UvicornWorker``: uvicorn-worker's ASGI worker with long sections.

``uvicorn_worker.UvicornWorker`` notifies the arbiter from uvicorn's main loop,
which begins only once the ASGI lifespan startup is over, and resets SIGABRT
to the default.  Here:

* the startup section (``worker.py``) lasts until uvicorn serves: the app's
  import and its lifespan startup (where a model loads) run inside it, with
  ``HEARTWORKER_STARTUP_CAP``, ``HEARTWORKER_STARTUP_STALL`` and
  ``heartworker.progress()``;
* each asyncio task owns its sections (``tasks.py``): ``async with
  long_section(...)``, ``@long_section`` on an ``async def``, or a plain
  ``with`` around blocking code in one;
* a request ended by a deadline, or by the worker's abort, gets its ``504``
  (``asgi.py``), and route caps and ``HEARTWORKER_REQUEST_TIMEOUT`` apply;
* SIGABRT runs Gunicorn's abort (the ``worker_abort`` hook, exit 1), as in
  the other workers;
* SIGTERM's graceful stop bounds open sections and uvicorn's drain by
  ``--graceful-timeout``.
"""

import asyncio
import signal
import sys

import uvicorn_worker
from gunicorn.arbiter import Arbiter
from uvicorn.server import Server

from .asgi import answering_timeouts
from .routes import Routes
from .signals import graceful_limit
from .tasks import TaskFlavor
from .threads import exit_past_threads
from .worker import HeartWorkerMixin


class _AbortingUvicornWorker(uvicorn_worker.UvicornWorker):
    """uvicorn-worker's, with Gunicorn's SIGABRT handler back (it resets it to the
    default: no ``worker_abort`` hook, exit 134), before heartworker's chain to it."""

    def init_signals(self):
        super().init_signals()
        signal.signal(signal.SIGABRT, self.handle_abort)


class HeartServer(Server):
    """uvicorn's server, telling the worker when it serves and when it is told to stop."""

    def __init__(self, worker, config):
        super().__init__(config=config)
        self.worker = worker

    async def startup(self, sockets=None):
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            if self.worker.abort_cause is None:
                raise
            # Aborted in the lifespan startup, which Starlette then reported failed:
            # uvicorn exits as from a failed boot (3), and the arbiter would halt.
            raise SystemExit(1) from None
        if self.worker.abort_cause is not None:
            # Aborted in the lifespan startup: uvicorn caught the abort's SystemExit
            # there (taking it for "lifespan unsupported") and would serve.
            stop_accepting(self)
            raise SystemExit(1)
        if self.started:
            self.worker.end_startup()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.worker.stop_began = True
        self.worker.stopping()


def stop_accepting(server):
    """``server`` (uvicorn's) accepts no more: what its listening sockets queue is left
    to the other workers (and to this one's successor).  On the loop thread."""
    for listening in getattr(server, "servers", ()):   # (none before the lifespan ends)
        listening.close()


def leaving(task):
    """Is ``task``, the loop's main one, being cancelled as the loop closes (asyncio's
    runner cancels every task once an exception has left the loop)?"""
    if task is None or task.done():
        return True
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None:
        return cancelling() > 0
    waiter = getattr(task, "_fut_waiter", None)     # (Python 3.10: no Task.cancelling())
    return getattr(task, "_must_cancel", False) or (waiter is not None and waiter.cancelled())


def stuck_threads(registry):
    """The lent threads still inside a section as the worker exits: [(what, since)]."""
    stuck = []
    for thread in list(registry.requests.values()):
        stack = list(registry.stacks.get(thread.owner, ())) if thread.lent else ()
        if stack:
            stuck.append((f"{thread.name}, {stack[-1].label()}", thread.started))
    return stuck


def _leave(worker, exit_):
    """The abort's ``SystemExit`` once more, from a callback of the loop: it leaves the
    loop unless it has already (then the loop is closing: nothing to do)."""
    if not leaving(worker.main_task):
        raise exit_


class UvicornWorker(HeartWorkerMixin, _AbortingUvicornWorker):
    """``gunicorn -k heartworker.UvicornWorker``."""

    startup_ends_at_run = False        # (it ends once uvicorn serves: HeartServer.startup)
    server = None                      # the HeartServer, once the loop runs
    main_task = None                   # the loop's main task (_serve)
    stop_began = False                 # SIGTERM: uvicorn's graceful stop (asgi.py)
    request_limit_ends_first = False   # (an awaiting task leaves the loop free)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The drain after SIGTERM ends with the sections' graceful limit (worker.py).
        self.config.timeout_graceful_shutdown = graceful_limit(self.cfg.graceful_timeout)

    def make_flavor(self):
        return TaskFlavor()

    def wrap_app(self, app):
        if self.heart_settings.route_caps:
            self.routes = Routes(self.heart_settings.route_caps)
        return answering_timeouts(app, self, self.routes, self.request_limit)

    async def _serve(self):
        # uvicorn-worker's own, with heartworker's server (it has no hook for one).
        if self.flavor is not None:     # (the loop runs: its tasks own their sections)
            self.flavor.attach(self.heart, asyncio.get_running_loop())
        self.main_task = asyncio.current_task()
        self.config.app = self.wsgi
        self.server = server = HeartServer(self, self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def run(self):
        try:
            super().run()
        finally:        # (a thread lent to a task, still inside its sections: lent.py)
            if self.heart is not None:
                exit_past_threads(self.log, stuck_threads(self.heart))

    def handle_abort(self, sig, frame):
        """Gunicorn's abort: its ``SystemExit`` is raised where the loop thread was.

        First the worker stops accepting, here in the handler: the connections
        queued while its loop was blocked go to the other workers, not down with this
        one.  Not at the loop's next callback: uvloop (libuv) accepts what is queued
        before it runs any.  (The handler runs on the loop thread between two
        bytecodes: closing a listening socket there is what a callback may do.)

        The ``SystemExit`` may land where it is caught: in a request's code, whose
        ``504`` ``asgi.py`` then sends, or in uvicorn's (which catches every
        exception of the app's and serves on).  So the loop gets it once more from
        its next callback, unless it has left the loop already: then asyncio is
        cancelling every task as the loop closes (each request answered), and
        ending that early would cut their answers short.  (An app that swallows it
        twice is ended by the abort's backstop a second later.)"""
        if self.server is not None:
            try:
                stop_accepting(self.server)
            except Exception:           # (the loop is closing: nothing is accepted)
                pass
        try:
            super().handle_abort(sig, frame)
        except SystemExit as exit_:
            loop = self.flavor.loop if self.flavor is not None else None
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_leave, self, exit_)
            raise


class UvicornH11Worker(UvicornWorker):
    """``gunicorn -k heartworker.UvicornH11Worker``: asyncio's own loop and h11, never
    uvloop or httptools (uvicorn-worker's ``UvicornH11Worker``: PyPy, no C extensions)."""

    CONFIG_KWARGS = uvicorn_worker.UvicornH11Worker.CONFIG_KWARGS
