"""The startup section: the worker's registry and guard are born with it, and it ends
as the worker serves (``worker.py``).

It opens in the worker process the moment it is forked (the ``pid`` property,
``worker.py``), counts the time since the spawn against ``HEARTWORKER_STARTUP_CAP``,
and closes as Gunicorn's ``run()`` begins (the uvicorn worker's, once its ASGI
lifespan startup is over), logging ``startup took``.
"""

from time import monotonic, time

from . import native
from .aftermath import Aftermath, ordinal
from .flavor import SyncFlavor
from .guard import Guard
from .heartbeat import Heartbeat
from .publish import Publisher, serves_status
from .registry import Registry
from .report import Watch, duration
from .section import activate
from .settings import CANCEL_GRACE, STARTUP_CAP, STARTUP_STALL, setting_name


def guard_tick(timeout):
    """How often the guard looks while a section is open: a quarter of ``--timeout``."""
    if not timeout:
        return 1.0
    return min(1.0, max(0.05, timeout / 4.0))


class Startup:
    """The startup section, and the registry and guard it begins with (a part of the
    worker mixin)."""

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
