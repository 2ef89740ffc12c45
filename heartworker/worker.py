"""What every heartworker worker adds to Gunicorn's: boot checks, the startup section,
the guard, and a heartbeat that carries the standing vouch.

A heartworker worker is ``class X(HeartWorkerMixin, gunicorn_worker_class)``
plus a *flavour* (see ``sync.py`` and ``ggevent.py``) that says who owns a
section, whether the serving loop is free, and what to do at a deadline.  The
mixin's parts: ``startup.py`` (the startup section, with which the registry and
the guard begin) and ``signals.py`` (SIGTERM, SIGABRT, the cancellation signal).

The startup section opens in the worker process the moment it is forked,
before Gunicorn's ``post_fork`` hook runs: ``Arbiter.spawn_worker`` sets
``worker.pid = os.getpid()`` first thing in the child (Gunicorn 22 to 27), and
the ``pid`` property below starts the heart there (``startup.py``), so that sections and
``heartworker.progress()`` work in ``post_fork`` too.  No other process sets
it to its own pid: not the arbiter, not a child that ``pre_fork`` forks.
Until the worker class's own flavour is installed (in ``load_wsgi``, after
gevent has patched), the serving thread is the one owner, as in the sync
worker, and a deadline aborts the worker (nothing is served yet).
"""

import os
import signal
import sys
from time import monotonic

from gunicorn.arbiter import Arbiter

from . import native
from .aftermath import shared_dir
from .answer import noting_response
from .children import Children
from .endings import CANCEL_SIGNAL
from .heartbeat import Heartbeat, check_protocol
from .routes import Routes, hint, in_route_sections, leave_route, warnings
from .regions import nothing
from .settings import (REQUEST_TIMEOUT, ROUTE_CAPS, SettingError, Settings, from_gunicorn,
                       setting_name)
from .signals import Signals
from .startup import Startup

STOP_WAIT = 1.0     # seconds an exiting worker waits for its guard to finish a look


def handler_codes(except_for):
    """The code objects of the Python signal handlers installed now (but ``except_for``'s)."""
    codes = set()
    for number in signal.valid_signals():
        if number == except_for:
            continue
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    return frozenset(codes)


class HeartWorkerMixin(Startup, Signals):

    def make_flavor(self):
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg, log):
        """In the arbiter, as it starts (``Arbiter.start``): warn of rules that never
        apply, start the status service.  A bad setting is the workers' boot error
        (init_process), as always."""
        check = getattr(super(), "check_config", None)
        if check is not None:
            check(cfg, log)
        try:
            given = from_gunicorn(cfg)
            settings = Settings.load(cfg.env, given=given)
        except SettingError:
            return
        for line in warnings(settings.route_caps, setting_name(ROUTE_CAPS, given)):
            log.warning("heartworker: %s", line)
        environ_rules = cfg.env.get(ROUTE_CAPS, os.environ.get(ROUTE_CAPS)) or ""
        if ROUTE_CAPS in given and environ_rules.strip():
            log.warning("heartworker: %s gives the route caps: %s (%r) is not read; put "
                        "every rule in one of the two", setting_name(ROUTE_CAPS, given),
                        ROUTE_CAPS, environ_rules)
        limit = settings.request_timeout
        if limit and cfg.timeout and limit >= cfg.timeout and cls.request_limit_ends_first:
            log.warning("heartworker: %s=%g is not shorter than --timeout (%g s): the "
                        "arbiter ends a request outside every section at --timeout first "
                        "in this worker", setting_name(REQUEST_TIMEOUT, given), limit,
                        cfg.timeout)
        if settings.status_bind is not None:
            from .status_http import start_service
            start_service(settings, given, cfg, log, sys._getframe(1))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Runs in the arbiter, before fork: nothing here may change the process.
        self.spawned_at = monotonic()
        self.heart = self.guard = self.startup = self.aftermath = self.flavor = None
        self.heart_tried = False
        self.abort_cause = None   # why the worker is being aborted, for the 504
        self.heart_settings = None
        self.routes = None        # the route caps' rules, compiled (in the worker, if any)
        self.request_limit = None  # HEARTWORKER_REQUEST_TIMEOUT, if set (serve)
        self.requests_begun = self.requests_ended = 0   # (the status service's in flight)
        self.startup_took = None  # seconds, once the startup is over
        self.abort_outside = False   # aborted for --timeout outside every section
        self.heart_given = {}     # the settings given to the launcher (named so in the log)
        self.heart_problem = check_protocol(self.tmp)
        try:
            self.aftermath_dir = shared_dir(self.cfg.worker_tmp_dir)
        except OSError as exc:
            self.aftermath_dir = None
            self.log.warning("heartworker: no directory for stack dumps (%s)", exc)
        try:
            self.heart_given = from_gunicorn(self.cfg)
            self.heart_settings = Settings.load(self.cfg.env, given=self.heart_given)
        except SettingError:
            return  # init_process refuses to boot, naming the setting
        startup_cap = self.heart_settings.startup_cap
        if self.heart_problem is None:
            # Until the guard exists in the worker (see the pid property), vouch
            # for the boot now, so that a boot that hangs before it is killed by the
            # arbiter at startup cap + --timeout instead of never (a fresh heartbeat
            # file has a wall-clock mtime, which the arbiter never finds stale).
            boot = Heartbeat(self.tmp)
            try:
                boot.write(self.spawned_at + startup_cap)
            finally:
                boot.close()

    @property
    def pid(self):
        return self.__dict__.get("pid")

    @pid.setter
    def pid(self, pid):
        self.__dict__["pid"] = pid
        if pid == os.getpid() and self.heart is None and not self.heart_tried \
                and self.heart_settings is not None and os.getppid() == self.ppid:
            self.start_heart(sys._getframe(1))   # in the worker: Arbiter.spawn_worker's frame

    def init_process(self):
        self.main_ident = native.get_ident()
        try:
            self.heart_given = from_gunicorn(self.cfg)
            self.heart_settings = Settings.load(self.cfg.env, given=self.heart_given)
        except SettingError as exc:
            self.log.error("heartworker: invalid setting: %s. The worker refuses to boot.", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            self.log.error("heartworker: this Python runs without the GIL (a free-threaded "
                           "build), which heartworker's bookkeeping relies on (see "
                           "heartworker/regions.py); run it with PYTHON_GIL=1. The worker "
                           "refuses to boot.")
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        # Before the app loads: a child it forks keeps nothing of the worker's (children.py).
        if not self.heart_settings.keep_children:
            Children(self.sockets, self.forks_from_serving_thread).install()
        super().init_process()

    def forks_from_serving_thread(self):
        """(In a child just forked) was it forked by a thread that serves requests?"""
        ident = native.get_ident()
        return ident == self.main_ident or self.heart is not None and ident in self.heart.requests

    def init_signals(self):
        super().init_signals()
        signal.signal(CANCEL_SIGNAL, self.handle_cancel)
        if self.heart is not None:    # (a cancellation never cuts one short: regions.py)
            self.heart.handler_codes = handler_codes(except_for=CANCEL_SIGNAL)
        if self.aftermath is not None:
            # stacks left by a worker killed with the GIL held (in its startup: a failed one)
            self.aftermath.collect(self.startup_killed_note)
            # after Gunicorn's SIGABRT handler: chained to it
            self.aftermath.enable_dump(self.dump_all_threads)

    def load_wsgi(self):
        if not self.heart_tried and self.heart_settings is not None:
            self.start_heart(sys._getframe(1))   # (not started at fork: a custom arbiter)
        if self.heart is not None:
            # The worker class's own flavour, now that gevent (if any) has patched.
            flavor = self.flavor = self.make_flavor()
            self.heart.adopt(flavor.owner)
            self.guard.flavor = flavor
            watch = self.guard.watch
            watch.stock_would_kill = lambda section, now: flavor.stock_would_kill(
                self.guard, section, now)
            watch.enabled = True      # (not while gevent patches the logging locks)
            grace = self.guard.grace
            if self.cfg.timeout and grace > self.cfg.timeout and not flavor.retires:
                self.log.warning("heartworker: %s=%g is longer than --timeout (%g s): a "
                                 "cancelled section that keeps the serving loop from "
                                 "notifying (the sync worker, a greenlet that blocks gevent's "
                                 "hub) is ended by the arbiter --timeout after its deadline, "
                                 "before that grace", self.guard.grace_name, grace,
                                 self.cfg.timeout)
        if self.heart is not None and not self.heart.handler_codes:   # (a custom arbiter)
            self.heart.handler_codes = handler_codes(except_for=CANCEL_SIGNAL)
        super().load_wsgi()
        if self.flavor is not None:
            self.wsgi = self.wrap_app(self.wsgi)

    def wrap_app(self, app):
        """The app as this worker serves it: its response noted, route caps applied."""
        app = noting_response(app, self.flavor.request_context)
        if self.heart_settings.route_caps:   # outermost: Gunicorn's handle_request calls it
            self.routes = Routes(self.heart_settings.route_caps)
            app = in_route_sections(app, self.routes, self.heart, self.flavor.request_context)
        return app

    def request_limit_of(self, settings):
        """(The seconds a request may run outside every section, or None: no limit of
        heartworker's; how the log names that limit).  ``HEARTWORKER_REQUEST_TIMEOUT``
        (off by default) in every worker; the threaded worker's is ``--timeout``
        without it (no other ends its request threads, see gthread.py)."""
        if settings.request_timeout:
            return settings.request_timeout, setting_name(REQUEST_TIMEOUT, self.heart_given)
        return None, "--timeout"

    def handle_request(self, *args):
        return self.serve(super().handle_request, args)

    def handle_http2_request(self, *args):
        """An HTTP/2 stream (Gunicorn 25+): a request like any other."""
        return self.serve(super().handle_http2_request, args)

    def serve(self, handle, args):
        """Gunicorn's ``handle``, counted in flight.  With route caps, this frame is the
        anchor of the request's route section, which it closes as ``handle`` returns
        (if the body's ``close()`` has not: routes.in_route_sections).  With a request
        limit, the request is a deadline anchored here (requests.py)."""
        self.requests_begun += 1
        if self.routes is None and self.request_limit is None:
            try:
                return handle(*args)
            finally:
                self.requests_ended += 1
        here = request = None
        if self.routes is not None:
            here = self.flavor.request_context()
            here.heartworker_serving = sys._getframe()
        if self.request_limit is not None and self.heart is not None:
            req = args[1]
            request = self.heart.request_begins(f"{req.method} {req.path}", sys._getframe(),
                                                self.request_limit)
        try:
            return handle(*args)
        finally:
            self.requests_ended += 1
            if here is not None:
                here.heartworker_serving = None     # (the frame holds the request's objects)
                leave_route(self.heart, here)
            if request is not None:
                # (a cancellation not delivered yet finds it closed: it is not raised)
                self.heart.request_done(request, nothing)

    # -- what the status service shows (publish.py) --------------------------------
    def phase(self):
        if self.startup is not None:
            return "starting"
        if self.guard is not None and self.guard.retiring:
            return "retiring"
        return "serving" if self.alive else "stopping"

    def in_flight(self):
        """Requests being served (one serving thread: its counts are exact)."""
        return max(0, self.requests_begun - self.requests_ended)

    def status_changed(self):
        """The phase changed: have the guard publish it now."""
        if self.guard is not None and self.guard.publisher is not None:
            self.guard.publisher.changed()
            self.guard.ring()

    def route_hint(self, method, path):
        """The fix a line about a request ended at --timeout outside every section names:
        in the form that holds the rules (the launcher's, else the environment's)."""
        launcher = ROUTE_CAPS in self.heart_given or (
            "route_caps" in self.cfg.settings and not self.heart_settings.route_caps)
        return hint(method, path, launcher)

    def run(self):
        if self.startup_ends_at_run:
            self.end_startup()
        try:
            super().run()
        finally:
            if self.guard is not None:
                # The worker exits: Gunicorn logs its last lines, which must not find
                # the guard holding a log handler's lock (guard.stop).
                self.guard.stop(STOP_WAIT)

    def notify(self):
        if self.heart is not None:
            self.heart.beat(super().notify)
        else:
            super().notify()
