"""What both heartworker workers add to Gunicorn's: boot checks, the startup section,
the guard, and a heartbeat that carries the standing vouch.

A heartworker worker is ``class X(HeartWorkerMixin, gunicorn_worker_class)``
plus a *flavour* (see ``sync.py`` and ``ggevent.py``) that says who owns a
section, whether the serving loop is free, and what to do at a deadline.
"""

import sys
from time import monotonic

from gunicorn.arbiter import Arbiter

from . import native
from .guard import Guard
from .heartbeat import Heartbeat, check_protocol
from .registry import Registry
from .section import activate
from .settings import SettingError, Settings
from .stacks import AbortDump


def guard_tick(timeout):
    """How often the guard looks while a section is open: a quarter of ``--timeout``."""
    if not timeout:
        return 1.0
    return min(1.0, max(0.05, timeout / 4.0))


class HeartWorkerMixin:

    def make_flavor(self):
        raise NotImplementedError

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Runs in the arbiter, before fork: nothing here may change the process.
        self.spawned_at = monotonic()
        self.heart = self.guard = self.startup = self.abort_dump = None
        self.heart_settings = None
        self.heart_problem = check_protocol(self.tmp)
        self._refresh_dump = False
        try:
            startup_cap = Settings.load(self.cfg.env).startup_cap
        except SettingError:
            return  # init_process refuses to boot, naming the setting
        if self.heart_problem is None:
            # post_fork and init_process run before the guard exists: vouch for
            # them now, so that a boot that hangs there is killed by the arbiter
            # at startup cap + --timeout instead of never (a fresh heartbeat file
            # has a wall-clock mtime, which the arbiter never finds stale).
            boot = Heartbeat(self.tmp)
            boot.write(self.spawned_at + startup_cap)
            boot.close()

    def init_process(self):
        try:
            self.heart_settings = Settings.load(self.cfg.env)
        except SettingError as exc:
            self.log.error("heartworker: invalid setting: %s. The worker refuses to boot.", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        super().init_process()

    def init_signals(self):
        super().init_signals()
        self.abort_dump = AbortDump(self.log)
        self.abort_dump.enable()

    def load_wsgi(self):
        if self.heart is None and self.heart_settings is not None:
            self.start_heart(sys._getframe(1))
        super().load_wsgi()

    def start_heart(self, frame):
        """Create the registry and the guard, and open the startup section."""
        if self.heart_problem is not None:
            self.log.warning("heartworker: Gunicorn's heartbeat is not what heartworker knows "
                             "(%s); sections will not vouch and this worker behaves as stock "
                             "Gunicorn", self.heart_problem)
            return
        settings = self.heart_settings
        flavor = self.make_flavor()
        registry = Registry(Heartbeat(self.tmp), serving_tid=native.get_ident(),
                            default_cap=settings.section_cap, window=self.cfg.timeout,
                            owner=flavor.owner)
        guard = Guard(registry, flavor, tick=guard_tick(self.cfg.timeout), ppid=self.ppid,
                      log=self.log, abort_dump=self.abort_dump)
        # The startup began at spawn: time spent in post_fork counts against its cap.
        self.startup = registry.enter("startup", settings.startup_cap, frame,
                                      started=self.spawned_at)
        self.heart, self.guard = registry, guard
        guard.start()
        activate(registry)

    def run(self):
        if self.startup is not None:
            self.heart.exit(self.startup)
            self.startup = None
        super().run()

    def notify(self):
        if self.heart is not None:
            self.heart.beat(super().notify)
        else:
            super().notify()
        if self._refresh_dump:
            self._refresh_dump = False
            self.abort_dump.refresh()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        if self.heart is not None:
            # Graceful stop: no section is vouched for past graceful_timeout from now.
            self.heart.set_limit(monotonic() + self.cfg.graceful_timeout)

    def handle_usr1(self, sig, frame):
        super().handle_usr1(sig, frame)
        self._refresh_dump = True   # follow the reopened error log at the next heartbeat
