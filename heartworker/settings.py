"""heartworker's settings: read once, at worker boot, and validated there.

Each setting is an environment variable, so plain ``gunicorn`` works: either
``gunicorn -e HEARTWORKER_SECTION_CAP=600 ...`` (Gunicorn's ``raw_env``, which
wins) or the process environment.

A bad value is a boot error that names the variable: the worker exits with
Gunicorn's ``WORKER_BOOT_ERROR`` and the arbiter shuts down, exactly as for an
application that fails to import.  It is never discovered at the first request.
"""

import os
from collections import namedtuple

SECTION_CAP = "HEARTWORKER_SECTION_CAP"
STARTUP_CAP = "HEARTWORKER_STARTUP_CAP"
CANCEL_GRACE = "HEARTWORKER_CANCEL_GRACE"
STARTUP_STALL = "HEARTWORKER_STARTUP_STALL"
REPORT_EVERY = "HEARTWORKER_REPORT_EVERY"
KEEP_CHILDREN = "HEARTWORKER_KEEP_CHILDREN"
ROUTE_CAPS = "HEARTWORKER_ROUTE_CAPS"
STATUS_BIND = "HEARTWORKER_STATUS_BIND"
LIVEZ_FAILED_STARTUPS = "HEARTWORKER_LIVEZ_FAILED_STARTUPS"
REQUEST_TIMEOUT = "HEARTWORKER_REQUEST_TIMEOUT"

DEFAULTS = {
    SECTION_CAP: 600.0,   # a request's long section: ten minutes
    STARTUP_CAP: 900.0,   # app loading and boot hooks: fifteen minutes
    CANCEL_GRACE: 1.0,    # from cancelling a section to aborting the worker if it goes on
    STARTUP_STALL: None,  # the longest the startup may go without progress (None: no limit)
    REPORT_EVERY: 60.0,   # seconds between report lines for long work (0: none)
    KEEP_CHILDREN: False,  # children forked by a worker keep what they inherit, as in stock
    ROUTE_CAPS: (),       # rules: a request that matches one runs in its section (routes.py)
    STATUS_BIND: None,    # where the arbiter serves the status service (None: nowhere)
    LIVEZ_FAILED_STARTUPS: 3,   # /livez fails after that many failed startups in a row
    REQUEST_TIMEOUT: 0.0,  # a request outside every section is cancelled after it (0: off)
}
# the same settings as Gunicorn settings, under the ``heartworker`` launcher (launcher.py)
GUNICORN_NAMES = {"section_cap": SECTION_CAP, "startup_cap": STARTUP_CAP,
                  "cancel_grace": CANCEL_GRACE, "startup_stall": STARTUP_STALL,
                  "report_every": REPORT_EVERY, "keep_children": KEEP_CHILDREN,
                  "route_caps": ROUTE_CAPS, "status_bind": STATUS_BIND,
                  "livez_failed_startups": LIVEZ_FAILED_STARTUPS,
                  "request_timeout": REQUEST_TIMEOUT}
CLI = {"route_caps": "--route-cap"}    # (repeatable: one rule each; the rest are as named)
OPTIONAL = {STARTUP_STALL, STATUS_BIND}     # may be unset (empty); never 0
MIN_REPORT_EVERY = 0.1         # report lines more often than that are noise (and a busy guard)
MAY_BE_ZERO = {REPORT_EVERY, REQUEST_TIMEOUT}   # 0 turns it off
FLAGS = {KEEP_CHILDREN}        # yes or no, not seconds
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


# The longest cap heartworker accepts: one year.  A deadline is written into the
# heartbeat file's mtime as monotonic() + cap; this bound keeps that within what
# every clock and file system here holds (checked at boot, see heartbeat.py),
# and a section that may run longer than a year has no cap worth the name.
MAX_SECONDS = 365 * 86400.0


def in_range(seconds):
    """The one rule for a cap or a setting: more than 0 and at most a year (False for NaN)."""
    return 0 < seconds <= MAX_SECONDS


def _is_zero(raw):
    try:
        return float(raw) == 0
    except (TypeError, ValueError):
        return False


class SettingError(ValueError):
    """A heartworker setting has a value the worker cannot run with."""


def parse_seconds(name, raw):
    """Return ``raw`` as a finite number of seconds > 0, or raise SettingError naming ``name``."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingError(f"{name}={raw!r} is not a number of seconds") from None
    if not in_range(value):
        raise SettingError(f"{name}={raw!r} must be a number of seconds > 0 and "
                           f"<= {MAX_SECONDS:.0f} (one year)")
    return value


def parse_count(name, raw):
    """Return ``raw`` as a whole number from 1 to 1,000,000, or raise SettingError."""
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        raise SettingError(f"{name}={raw!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise SettingError(f"{name}={raw!r} must be from 1 to 1000000")
    return value


def parse_bind(name, raw):
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free one) or ``unix:PATH``, as
    ``("inet", host, port)`` or ``("unix", path)``; else SettingError naming ``name``."""
    text = str(raw).strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path or "\0" in path:
            raise SettingError(f"{name}={raw!r}: unix: needs a path (unix:/run/app/status.sock)")
        return ("unix", path)
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535 or " " in host:
        raise SettingError(f"{name}={raw!r} is not HOST:PORT (127.0.0.1:9101, [::1]:9101) "
                           f"or unix:PATH")
    return ("inet", host, int(port))


def parse_flag(name, raw):
    """Return ``raw`` (1/true/yes/on or 0/false/no/off) as a bool, or raise SettingError."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE or word in FALSE:
        return word in TRUE
    raise SettingError(f"{name}={raw!r} is not a yes or a no (1/true/yes/on, 0/false/no/off)")


def from_gunicorn(cfg):
    """{variable: value} of the heartworker settings given to the ``heartworker``
    launcher as Gunicorn settings (none under plain ``gunicorn``)."""
    given = {}
    for name, variable in GUNICORN_NAMES.items():
        setting = cfg.settings.get(name)
        value = None if setting is None else setting.get()
        if variable in PARSED and value is not None:   # (checked by the launcher already)
            value = PARSED[variable](cli_name(name), value) or None
        if value is not None:
            given[variable] = value
    return given


def gunicorn_name(variable):
    """The Gunicorn setting (``startup_cap``) that stands for ``variable`` under the launcher."""
    return next(k for k, v in GUNICORN_NAMES.items() if v == variable)


def setting_name(variable, given=()):
    """How a log line names a setting: the way it was given.

    ``--startup-cap`` if the ``heartworker`` launcher got it as a Gunicorn
    setting (``given``: see :func:`from_gunicorn`), else the environment variable.
    """
    if variable in given:
        return cli_name(gunicorn_name(variable))
    return variable


def cli_name(name):
    """The launcher's command-line option for the Gunicorn setting ``name``."""
    return CLI.get(name) or "--" + name.replace("_", "-")


def route_rules(variable, raw):
    """The checked rules (routes.Rule) of ``raw``: the launcher's list, or the variable's
    text (rules separated by ``;``)."""
    from .routes import parse_rules, split_rules
    texts = split_rules(raw) if isinstance(raw, str) else list(raw)
    return parse_rules(texts, variable)


def check_stall(stall, cap):
    """Validate a ``stall`` given in code: None, or seconds > 0 and at most ``cap`` if given."""
    stall = check_cap(stall, "stall")
    if stall is not None and cap is not None and stall > cap:
        raise ValueError(f"stall ({stall:g} s) must not be longer than cap ({cap:g} s): "
                         f"the cap would always come first")
    return stall


def check_cap(cap, what="cap"):
    """Validate a ``cap`` given in code (``long_section(cap=...)``); None means the default."""
    if cap is None:
        return None
    kind = type(cap)
    if (kind is float or kind is int) and 0 < cap <= MAX_SECONDS:
        return float(cap)         # the usual case, fast: it is checked on every `with`
    if isinstance(cap, bool) or not isinstance(cap, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(cap).__name__}")
    if not in_range(cap):            # exact for huge ints too
        raise ValueError(f"{what} must be a number of seconds > 0 and <= {MAX_SECONDS:.0f} "
                         f"(one year), not {cap!r}")
    return float(cap)


# the settings that are not seconds nor flags: how a value given to the launcher is read
PARSED = {ROUTE_CAPS: route_rules, STATUS_BIND: parse_bind, LIVEZ_FAILED_STARTUPS: parse_count}


class Settings(namedtuple("Settings", "section_cap startup_cap cancel_grace startup_stall "
                                      "report_every keep_children route_caps status_bind "
                                      "livez_failed_startups request_timeout",
                          defaults=(DEFAULTS[SECTION_CAP], DEFAULTS[STARTUP_CAP],
                                    DEFAULTS[CANCEL_GRACE], DEFAULTS[STARTUP_STALL],
                                    DEFAULTS[REPORT_EVERY], DEFAULTS[KEEP_CHILDREN],
                                    DEFAULTS[ROUTE_CAPS], DEFAULTS[STATUS_BIND],
                                    DEFAULTS[LIVEZ_FAILED_STARTUPS],
                                    DEFAULTS[REQUEST_TIMEOUT]))):
    """The validated settings of one worker."""

    __slots__ = ()

    @classmethod
    def load(cls, raw_env=None, environ=None, given=None):
        """Read the settings: ``given`` (the ``heartworker`` launcher's Gunicorn settings,
        already validated: {variable: seconds}) over Gunicorn's ``cfg.env`` (``-e``)
        over ``environ``."""
        environ = os.environ if environ is None else environ
        raw_env = raw_env or {}
        given = given or {}

        def get(name):
            if given.get(name) is not None:
                return given[name]
            raw = raw_env.get(name, environ.get(name))
            if raw is None or (name in OPTIONAL and not raw.strip()):
                return DEFAULTS[name]
            if name == ROUTE_CAPS:
                return route_rules(name, raw)
            if name == STATUS_BIND:
                return parse_bind(name, raw)
            if name == LIVEZ_FAILED_STARTUPS:
                return parse_count(name, raw)
            if name in FLAGS:
                return parse_flag(name, raw)
            if name in MAY_BE_ZERO and _is_zero(raw):
                return 0.0
            return parse_seconds(name, raw)

        settings = cls(section_cap=get(SECTION_CAP), startup_cap=get(STARTUP_CAP),
                       cancel_grace=get(CANCEL_GRACE), startup_stall=get(STARTUP_STALL),
                       report_every=get(REPORT_EVERY), keep_children=get(KEEP_CHILDREN),
                       route_caps=get(ROUTE_CAPS), status_bind=get(STATUS_BIND),
                       livez_failed_startups=get(LIVEZ_FAILED_STARTUPS),
                       request_timeout=get(REQUEST_TIMEOUT))
        if 0 < settings.report_every < MIN_REPORT_EVERY:
            raise SettingError(f"{REPORT_EVERY}={settings.report_every:g} is shorter than "
                               f"{MIN_REPORT_EVERY:g} s (use 0 to turn the report lines off)")
        if settings.startup_stall is not None and settings.startup_stall > settings.startup_cap:
            raise SettingError(f"{STARTUP_STALL}={settings.startup_stall:g} is longer than "
                               f"{STARTUP_CAP}={settings.startup_cap:g}: the cap would always "
                               f"come first")
        return settings
