"""``heartworker [gunicorn options] app:app``: Gunicorn, with heartworker's settings as
real Gunicorn settings.

Gunicorn builds its option list before it loads the worker class, so a ``-k``
class cannot add options; this launcher defines them (Gunicorn's ``Setting``
subclasses register themselves, as Gunicorn's own do) before Gunicorn builds
its configuration.  So they are in ``--help``, on the command line
(``--section-cap 600``), in a conf file (``section_cap = 600``) and in
``GUNICORN_CMD_ARGS``, and Gunicorn validates them at startup, naming the
setting.  The default worker class is ``heartworker.SyncWorker``.

Which source wins: a setting given to the launcher (command line over
``GUNICORN_CMD_ARGS`` over the conf file, as for any Gunicorn setting) wins
over the ``HEARTWORKER_*`` environment variable (``-e`` or the process
environment), which plain ``gunicorn -k heartworker.X`` still reads.
"""

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import Setting

from . import settings as hs

DEFAULT_WORKER = "heartworker.SyncWorker"


def _validator(env_name, may_be_zero=False):
    """Gunicorn's validator for one setting: seconds, as the environment variable's rule."""
    name = next(k for k, v in hs.GUNICORN_NAMES.items() if v == env_name)
    shown = f"{name} (--{name.replace('_', '-')}, {env_name})"

    def validate(value):
        if value is None:
            return None          # not given: the environment variable, then the default
        if may_be_zero and hs._is_zero(value):
            return 0.0
        seconds = hs.parse_seconds(shown, value)
        if env_name == hs.REPORT_EVERY and seconds < hs.MIN_REPORT_EVERY:
            raise hs.SettingError(f"{shown}={value!r} must be 0 or at least "
                                  f"{hs.MIN_REPORT_EVERY:g} s")
        return seconds
    return validate


class SectionCap(Setting):
    name = "section_cap"
    section = "heartworker"
    cli = ["--section-cap"]
    meta = "SECONDS"
    validator = _validator(hs.SECTION_CAP)
    default = None
    desc = """\
        The cap of a ``long_section`` that gives none (default 600).

        Same as HEARTWORKER_SECTION_CAP, which it overrides.
        """


class StartupCap(Setting):
    name = "startup_cap"
    section = "heartworker"
    cli = ["--startup-cap"]
    meta = "SECONDS"
    validator = _validator(hs.STARTUP_CAP)
    default = None
    desc = """\
        The cap of a worker's startup, from its spawn to its first accept (default 900).

        Same as HEARTWORKER_STARTUP_CAP, which it overrides.
        """


class StartupStall(Setting):
    name = "startup_stall"
    section = "heartworker"
    cli = ["--startup-stall"]
    meta = "SECONDS"
    validator = _validator(hs.STARTUP_STALL)
    default = None
    desc = """\
        The longest a worker's startup may go without heartworker.progress() (default: none).

        Same as HEARTWORKER_STARTUP_STALL, which it overrides.
        """


class CancelGrace(Setting):
    name = "cancel_grace"
    section = "heartworker"
    cli = ["--cancel-grace"]
    meta = "SECONDS"
    validator = _validator(hs.CANCEL_GRACE)
    default = None
    desc = """\
        Seconds a cancelled section has to end before the worker is aborted (default 1).

        Same as HEARTWORKER_CANCEL_GRACE, which it overrides.
        """


class ReportEvery(Setting):
    name = "report_every"
    section = "heartworker"
    cli = ["--report-every"]
    meta = "SECONDS"
    validator = _validator(hs.REPORT_EVERY, may_be_zero=True)
    default = None
    desc = """\
        Seconds between the log lines that report a long section (default 60; 0: none).

        Same as HEARTWORKER_REPORT_EVERY, which it overrides.
        """


class HeartworkerApplication(WSGIApplication):
    def load_default_config(self):
        super().load_default_config()
        self.cfg.set("worker_class", DEFAULT_WORKER)   # the conf file and the CLI override it


def run(prog="heartworker"):
    """The ``heartworker`` console script."""
    HeartworkerApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog=prog).run()


if __name__ == "__main__":
    run()
