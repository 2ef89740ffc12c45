"""What every heartworker worker adds to Gunicorn's: boot checks, the startup section,
the guard, and a heartbeat that carries the standing vouch.

A heartworker worker is ``class X(HeartWorkerMixin, gunicorn_worker_class)``
plus a *flavour* (see ``sync.py`` and ``ggevent.py``) that says who owns a
section, whether the serving loop is free, and what to do at a deadline.

The startup section opens in the worker process the moment it is forked,
before Gunicorn's ``post_fork`` hook runs: ``Arbiter.spawn_worker`` sets
``worker.pid = os.getpid()`` first thing in the child (Gunicorn 22 to 27), and
the ``pid`` property below starts the heart there, so that sections and
``heartworker.progress()`` work in ``post_fork`` too.  No other process sets
it to its own pid: not the arbiter, not a child that ``pre_fork`` forks.
Until the worker class's own flavour is installed (in ``load_wsgi``, after
gevent has patched), the serving thread is the one owner, as in the sync
worker, and a deadline aborts the worker (nothing is served yet).
"""

import os
import signal
import sys
from time import monotonic, time

from gunicorn.arbiter import Arbiter

from . import native
from .aftermath import Aftermath, ordinal, shared_dir
from .answer import answer_timeout, noting_response
from .children import Children
from .endings import CANCEL_SIGNAL
from .flavor import SyncFlavor
from .guard import Guard
from .heartbeat import Heartbeat, check_protocol
from .publish import Publisher, serves_status
from .registry import Registry
from .report import Watch, duration
from .routes import Routes, hint, in_route_sections, leave_route, warnings
from .section import SectionCapExceeded, activate
from .regions import nothing
from .settings import (CANCEL_GRACE, REQUEST_TIMEOUT, ROUTE_CAPS, STARTUP_CAP, STARTUP_STALL,
                       SettingError, Settings, from_gunicorn, setting_name)

ANSWER_TIME = 1.0   # seconds an aborting worker has to answer before the arbiter's SIGKILL
GRACEFUL_ANSWER = 0.25   # at most: sections end this much before --graceful-timeout runs out
STOP_WAIT = 1.0     # seconds an exiting worker waits for its guard to finish a look


def graceful_limit(graceful_timeout):
    """Seconds from SIGTERM to the end of every section (the graceful stop's limit).

    A little less than ``--graceful-timeout``: when the arbiter stops, it starts
    that clock just before it sends SIGTERM and SIGKILLs its workers the moment
    it runs out, so a section cancelled at exactly that time would lose its 504.
    """
    return graceful_timeout - min(GRACEFUL_ANSWER, graceful_timeout / 4.0)


def guard_tick(timeout):
    """How often the guard looks while a section is open: a quarter of ``--timeout``."""
    if not timeout:
        return 1.0
    return min(1.0, max(0.05, timeout / 4.0))


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


class HeartWorkerMixin:

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

    def start_heart(self, frame):
        """Create the registry and the guard, and open the startup section."""
        self.heart_tried = True
        if self.heart_problem is not None:
            self.log.warning("heartworker: Gunicorn's heartbeat is not what heartworker knows "
                             "(%s); sections will not vouch and this worker behaves as stock "
                             "Gunicorn", self.heart_problem)
            return
        settings = self.heart_settings
        if self.aftermath_dir is not None:
            self.aftermath = Aftermath(self.aftermath_dir, self.log)
            self.aftermath.startup_began(time() - (monotonic() - self.spawned_at))
        flavor = SyncFlavor()        # until load_wsgi: the serving thread owns every section
        registry = Registry(Heartbeat(self.tmp), serving_tid=native.get_ident(),
                            default_cap=settings.section_cap, window=self.cfg.timeout,
                            owner=flavor.owner)
        registry.land = self.land_cancellation
        guard = Guard(registry, flavor, tick=guard_tick(self.cfg.timeout), ppid=self.ppid,
                      log=self.log, grace=settings.cancel_grace,
                      grace_name=setting_name(CANCEL_GRACE, self.heart_given),
                      aftermath=self.aftermath,
                      graceful=self.cfg.graceful_timeout)
        guard.route_hint = self.route_hint
        self.request_limit, guard.request_limit_name = self.request_limit_of(settings)
        guard.watch = Watch(registry, self.log, every=settings.report_every,
                            window=self.cfg.timeout, count=guard.count)
        # The startup began at spawn: time spent before the fork counts against its cap.
        self.startup = registry.enter("startup", settings.startup_cap, frame,
                                      started=self.spawned_at, stall=settings.startup_stall)
        guard.startup, guard.startup_note = self.startup, self.startup_note
        if self.aftermath_dir is not None and serves_status(self.aftermath_dir):
            guard.publisher = Publisher(self.aftermath_dir, self)
        guard.watch.startup = self.startup
        self.heart, self.guard = registry, guard
        guard.start()
        activate(registry)

    def request_limit_of(self, settings):
        """(The seconds a request may run outside every section, or None: no limit of
        heartworker's; how the log names that limit).  ``HEARTWORKER_REQUEST_TIMEOUT``
        (off by default) in every worker; the threaded worker's is ``--timeout``
        without it (no other ends its request threads, see gthread.py)."""
        if settings.request_timeout:
            return settings.request_timeout, setting_name(REQUEST_TIMEOUT, self.heart_given)
        return None, "--timeout"

    def startup_note(self, setting, value):
        """What the CRITICAL line of a startup past its cap (or stall limit) adds."""
        n = self.aftermath.startup_failed() if self.aftermath is not None else 1
        if setting == STARTUP_STALL:
            advice, past = "between two progress reports", "without progress past its limit"
        else:
            advice, past = "to start", "past its cap"
        name = setting_name(setting, self.heart_given)
        return (f" ({name}={value:g}: raise it if the app legitimately takes longer "
                f"{advice}); the {ordinal(n)} startup in a row {past}")

    def startup_killed_note(self, elapsed):
        """What the next worker logs of a startup killed with the GIL held, ``elapsed``
        seconds after it began: the cap's note if that had passed, else what may have."""
        settings, given = self.heart_settings, self.heart_given
        if elapsed >= settings.startup_cap:
            return self.startup_note(STARTUP_CAP, settings.startup_cap)
        stall = "" if settings.startup_stall is None else (
            f" or its stall limit ({setting_name(STARTUP_STALL, given)}="
            f"{settings.startup_stall:g})")
        return (f", {elapsed:.1f} s after it began, within its cap "
                f"({setting_name(STARTUP_CAP, given)}={settings.startup_cap:g}): past the "
                f"deadline of a section opened in it{stall}")

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

    # Does the startup end as Gunicorn's run() begins?  (The uvicorn worker's ends once
    # the ASGI lifespan startup has, in run().)
    startup_ends_at_run = True

    def end_startup(self):
        """The app is ready to serve: close the startup section, log how long it took."""
        startup = self.startup
        if startup is None:
            return
        self.heart.exit(startup)
        self.startup = None
        if self.aftermath is not None:
            self.aftermath.startup_done()
        took = self.startup_took = monotonic() - startup.started
        self.status_changed()
        self.log.info("heartworker: startup took %s (cap %s)", duration(took),
                      duration(startup.cap), extra={
                          "metric": "heartworker.startup", "value": round(took * 1000),
                          "mtype": "timer" if hasattr(self.log, "timer") else "histogram"})

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

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.stopping()

    def stopping(self):
        """The graceful stop began (SIGTERM): no section is vouched for past
        ``--graceful-timeout`` from now.  Safe in a signal handler."""
        self.status_changed()
        if self.heart is not None:
            self.heart.set_limit(monotonic() + graceful_limit(self.cfg.graceful_timeout))

    # Does the worker's own handle_abort log the stack the abort's signal found? (gevent's)
    logs_abort_stack = False
    # Does faulthandler dump every thread at SIGABRT, or the serving one? (aftermath.py)
    dump_all_threads = False
    # Does the arbiter end a request outside sections at --timeout, whatever a longer
    # HEARTWORKER_REQUEST_TIMEOUT says?  (The sync worker's: its loop is the request's.)
    request_limit_ends_first = True

    def give_answer_time(self, now):
        """Keep the arbiter's SIGKILL off for ``ANSWER_TIME``: the first thing an abort does.

        The arbiter sends SIGKILL at its next look if the heartbeat is still
        stale, and it looks again at every signal it gets (a worker's exit):
        often milliseconds after its SIGABRT, before this abort has answered.
        Stock waits for that look too.  Safe in a signal handler; nothing is
        vouched for after it."""
        if self.heart is not None and self.cfg.timeout:
            self.heart.aborting(now - self.cfg.timeout + ANSWER_TIME)

    def handle_abort(self, sig, frame):
        guard = self.guard
        now = monotonic()
        self.give_answer_time(now)
        # The raw dump faulthandler just wrote, taken first (a SIGKILL from here on must
        # not have the next worker count this startup's end once more).
        dump = self.aftermath.take_own() if self.aftermath is not None else ""
        threads = self.flavor.frames_at_abort() if self.flavor is not None else None
        if guard is not None and guard.aborting:
            self.abort_cause = guard.abort_cause      # (the guard logged the stack)
        else:       # the arbiter's: a section past its deadline means the GIL was held
            late = self.heart.past_deadline(frame, now, threads) if self.heart else None
            if late is not None:
                self.abort_cause = guard.arbiter_cause(late, now)
            elif threads is None:
                self.abort_cause = f"the request ran longer than --timeout ({self.cfg.timeout:g} s)"
                self.abort_outside = self.startup is None
            else:           # the threaded worker's loop notifies whatever its threads do
                self.abort_cause = (f"Gunicorn's main loop did not notify within --timeout "
                                    f"({self.cfg.timeout:g} s)")
            # Python runs the abort: in a request's code a readable traceback is logged
            # (answer.py; gevent's handle_abort), and the dump would print the same
            # stacks again.  No traceback shows the startup's or the request threads'.
            if dump and not self.logs_abort_stack and (self.startup is not None
                                                       or threads is not None):
                self.log.error("heartworker: worker (pid %s) aborted by the arbiter: %s. Its "
                               "stacks when it got SIGABRT (most recent call first):\n%s",
                               os.getpid(), self.abort_cause, dump)
        super().handle_abort(sig, frame)

    def handle_cancel(self, sig, frame):
        """CANCEL_SIGNAL: raise SectionCapExceeded if ``frame`` runs a cancelled section's code."""
        if self.heart is not None:
            self.land_cancellation(frame)

    def land_cancellation(self, frame):
        """Raise SectionCapExceeded here if ``frame`` (this thread's code) is in a cancelled section.

        Only inside it, never in heartworker's own bookkeeping, never while a
        cancellation is being handled here (a ``finally`` or ``except`` block as
        one unwinds: the guard sends the signal again while it runs on), and
        never once the worker is being aborted (it would replace the abort's
        SystemExit).  A signal that finds the thread in the bookkeeping is not
        lost: it is landed where the bookkeeping returns to the section's code
        (``long_section.__enter__``/``__exit__``, ``progress``), so that code
        that spends most of its time entering and leaving sections is ended as
        surely as any other.
        """
        reg = self.heart
        if self.abort_cause is not None:
            return                  # the worker is being aborted: its SystemExit must unwind
        if not reg.interruptible(frame):
            reg.cancel_waits = True
            return
        reg.cancel_waits = False
        if isinstance(sys.exc_info()[1], SectionCapExceeded):
            return                  # one is being handled here: after it, if still due
        why = self.guard.take_cancellation(reg.owner() if reg.owner else None, frame)
        if why is not None:
            raise SectionCapExceeded(why)

    def handle_error(self, req, client, addr, exc):
        if req is not None:
            if isinstance(exc, SectionCapExceeded):
                return answer_timeout(self, req, client, addr, str(exc), raised=exc)
            if isinstance(exc, SystemExit) and self.abort_cause is not None:
                by_arbiter = self.guard is None or not self.guard.aborting
                return answer_timeout(self, req, client, addr, self.abort_cause,
                                      exc if by_arbiter else None, raised=exc)
        return super().handle_error(req, client, addr, exc)
