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
from gunicorn.config import Setting, validate_bool

from . import settings as hs
from .routes import parse_rules, split_rules

DEFAULT_WORKER = "heartworker.SyncWorker"


def _validator(env_name, may_be_zero=False):
    """Gunicorn's validator for one setting: seconds, as the environment variable's rule."""
    name = hs.gunicorn_name(env_name)
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


def _register(name, variable, default, meaning, may_be_zero=False):
    """Register one heartworker setting with Gunicorn (its Setting metaclass does it)."""
    cli = "--" + name.replace("_", "-")
    attrs = dict(name=name, section="heartworker", cli=[cli], meta="SECONDS", default=None,
                 validator=_validator(variable, may_be_zero),
                 desc=f"{meaning} (default {default}).\n\nSame as {variable}, which it "
                      f"overrides.\n")
    return type(Setting)("".join(p.title() for p in name.split("_")), (Setting,), attrs)


SETTINGS = [
    _register("section_cap", hs.SECTION_CAP, "600",
              "The cap of a ``long_section`` that gives none"),
    _register("startup_cap", hs.STARTUP_CAP, "900",
              "The cap of a worker's startup, from its spawn to its first accept"),
    _register("startup_stall", hs.STARTUP_STALL, "none",
              "The longest a worker's startup may go without heartworker.progress()"),
    _register("cancel_grace", hs.CANCEL_GRACE, "1",
              "Seconds a cancelled section has to end before the worker is aborted"),
    _register("report_every", hs.REPORT_EVERY, "60; 0: none",
              "Seconds between the log lines that report a long section", may_be_zero=True),
    _register("request_timeout", hs.REQUEST_TIMEOUT, "0: none",
              "Seconds a request may run outside every section before it is cancelled "
              "with a 504 (the threaded worker's default: --timeout)", may_be_zero=True),
    type(Setting)("KeepChildren", (Setting,), dict(
        name="keep_children", section="heartworker", cli=["--keep-children"],
        action="store_true", default=None, validator=validate_bool,
        desc=f"Processes forked by a worker keep its sockets and outlive it, as in stock "
             f"Gunicorn (default: they drop them and end with it).\n\nSame as "
             f"{hs.KEEP_CHILDREN}=1, which it overrides.\n")),
]


def _validate_rules(value):
    """Gunicorn's validator of ``route_caps``: a list of rules (a str: rules split at ``;``)."""
    if value is None:
        return None
    shown = f"route_caps ({hs.CLI['route_caps']}, {hs.ROUTE_CAPS})"
    if isinstance(value, str):
        value = split_rules(value)
    if not isinstance(value, (list, tuple)):
        raise hs.SettingError(f"{shown} must be a list of rules, not {type(value).__name__}")
    parse_rules(value, shown)
    return list(value)


SETTINGS.append(type(Setting)("RouteCaps", (Setting,), dict(
    name="route_caps", section="heartworker", cli=["--route-cap"], meta="RULE",
    action="append", default=None, validator=_validate_rules,
    desc="A request that matches RULE runs inside a section with its cap (repeat it for "
         "more rules; the first that matches wins).\n\nA rule is "
         "``[METHODS ]PATTERN=SECONDS[,stall=SECONDS]``, e.g. ``'POST /export/**=600'``. "
         f"Same as {hs.ROUTE_CAPS} (rules separated by ``;``), which it overrides.\n")))


def _checked(variable, parse):
    """Gunicorn's validator for a setting read by ``parse`` (it keeps the text given)."""
    name = hs.gunicorn_name(variable)
    shown = f"{name} ({hs.cli_name(name)}, {variable})"

    def validate(value):
        if value is None or isinstance(value, str) and not value.strip():
            return None
        parse(shown, value)
        return str(value).strip()
    return validate


SETTINGS += [
    type(Setting)("StatusBind", (Setting,), dict(
        name="status_bind", section="heartworker", cli=["--status-bind"], meta="ADDRESS",
        default=None, validator=_checked(hs.STATUS_BIND, hs.parse_bind),
        desc=f"Serve the status service (/livez /readyz /startupz /status /metrics) from "
             f"the arbiter at HOST:PORT or unix:PATH (default: none).\n\nSame as "
             f"{hs.STATUS_BIND}, which it overrides.\n")),
    type(Setting)("LivezFailedStartups", (Setting,), dict(
        name="livez_failed_startups", section="heartworker", cli=["--livez-failed-startups"],
        meta="INT", default=None, validator=_checked(hs.LIVEZ_FAILED_STARTUPS, hs.parse_count),
        desc=f"/livez fails after that many startups in a row ended past their cap or stall "
             f"limit (default 3).\n\nSame as {hs.LIVEZ_FAILED_STARTUPS}, which it "
             f"overrides.\n")),
]


class HeartworkerApplication(WSGIApplication):
    def load_default_config(self):
        super().load_default_config()
        self.cfg.set("worker_class", DEFAULT_WORKER)   # the conf file and the CLI override it


def run(prog="heartworker"):
    """The ``heartworker`` console script."""
    HeartworkerApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog=prog).run()


if __name__ == "__main__":
    run()
