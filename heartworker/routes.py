"""Route caps: a request that matches a rule runs inside a section named after it.

A rule is ``[METHODS ]PATTERN=SECONDS[,stall=SECONDS]``:

* ``METHODS``: a comma list (``GET,HEAD``); none means any method.
* ``PATTERN`` is matched against ``PATH_INFO`` (no query string).  A glob:
  ``*`` matches within one path segment (no ``/``), ``**`` across segments,
  everything else is literal; the whole path must match.  ``~ `` before it
  makes it a regular expression, searched in the path (anchor it with ``^``
  and ``$`` to match the whole path).
* ``SECONDS`` is the cap (it replaces ``--timeout`` for that request, longer
  or shorter); ``stall`` the longest the request may go without
  ``heartworker.progress()``.

The first matching rule, in the order given, wins.  Rules are checked at boot
(:func:`parse_rules`: a bad one is a :class:`~heartworker.SettingError` naming
the setting and the rule) and compiled once (:class:`Routes`): consecutive glob
rules become one regular expression, so a request that no rule matches costs
one ``fullmatch`` for them all.
"""

import re
import shlex
import sys
from functools import lru_cache

from .deadline import INF, Section
from .settings import SettingError, check_stall, parse_seconds

# Methods a rule may name without a warning (RFC 9110, PATCH, WebDAV's).
KNOWN_METHODS = frozenset(
    "GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY "
    "MOVE LOCK UNLOCK SEARCH REPORT".split())
_RULE = re.compile(r"""\s*
    (?:(?P<methods>[A-Za-z]+(?:\s*,\s*[A-Za-z]+)*)\s+)?     # GET,HEAD
    (?P<pattern>\S.*?)\s*                                    # /export/** or ~ ^/x$
    =\s*(?P<cap>[^=,\s]+)                                    # =600
    (?:\s*,\s*stall\s*=\s*(?P<stall>[^=,\s]+))?\s*$          # ,stall=60
    """, re.VERBOSE | re.DOTALL)
_FORM = "[METHODS ]PATTERN=SECONDS[,stall=SECONDS]"


class Route(Section):
    """The section a request runs in when a rule matches it (log lines: ``route '...'``)."""

    __slots__ = ()
    kind = "route"


class Rule:
    """One rule, checked: ``methods`` (a frozenset, or None for any), ``pattern``
    (the text after the methods), ``regex`` (compiled), ``cap``, ``stall``."""

    __slots__ = ("text", "methods", "pattern", "is_regex", "regex", "cap", "stall")

    def __init__(self, text, methods, pattern, is_regex, regex, cap, stall):
        self.text, self.methods, self.pattern = text, methods, pattern
        self.is_regex, self.regex, self.cap, self.stall = is_regex, regex, cap, stall

    @property
    def name(self):
        """What the section is called: ``POST /export/**`` (the methods and the pattern)."""
        methods = ",".join(sorted(self.methods)) + " " if self.methods else ""
        return f"{methods}{'~ ' if self.is_regex else ''}{self.pattern}"

    def open(self, registry, frame):
        """Open this rule's section for the calling owner, anchored at ``frame``
        (the caller of the WSGI app); None if the owner is not one that vouches."""
        section = Route(None, self.name, self.cap, INF, None, frame, 0.0, True, self.stall)
        return section if registry.add(section, frame) else None

    def matches(self, method, path):
        return (self.methods is None or method in self.methods) and (
            self.regex.search(path) if self.is_regex else self.regex.fullmatch(path)) is not None

    def __repr__(self):
        return f"Rule({self.text!r})"


def glob_regex(pattern):
    """The regular expression of a glob: ``**`` any text, ``*`` any text without ``/``."""
    parts = re.split(r"(\*\*|\*)", pattern)
    return "".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts)


def parse_rule(text, setting):
    """One rule, checked, or a SettingError naming ``setting`` and the rule."""
    def bad(why):
        return SettingError(f"{setting}: the rule {text!r} {why} (a rule is {_FORM}, "
                            f"for example 'POST /export/**=600,stall=60')")

    if not isinstance(text, str):
        raise SettingError(f"{setting}: a rule must be a str, not {type(text).__name__}")
    m = _RULE.fullmatch(text)
    if m is None:
        raise bad("is not a rule")
    methods = None
    if m["methods"]:
        methods = frozenset(w.strip().upper() for w in m["methods"].split(","))
    pattern = m["pattern"]
    is_regex = pattern.startswith("~")
    if is_regex:
        pattern = pattern[1:].strip()
        if not pattern:
            raise bad("has no regular expression after '~'")
        try:
            regex = re.compile(pattern, re.DOTALL)
        except (re.error, RecursionError, OverflowError) as exc:
            raise bad(f"has a regular expression that does not compile ({exc})") from None
    else:
        if not pattern.startswith(("/", "*")):
            raise bad("has a pattern that never matches (PATH_INFO begins with '/'; "
                      "'~ ' before a regular expression)")
        if "=" in pattern:     # (a typo in the numbers' part, as often as a path's '=')
            raise bad("has '=' in its pattern (a path with '=' needs a regular expression, "
                      "'~ ^/a=b$=5')")
        if re.search(r"\*\*\*", pattern):
            raise bad("has '***' in its pattern ('*' stays in a segment, '**' spans them)")
        regex = re.compile(glob_regex(pattern), re.DOTALL)
    try:
        cap = parse_seconds("its cap", m["cap"])
        stall = None if m["stall"] is None else parse_seconds("its stall", m["stall"])
        stall = check_stall(stall, cap)
    except (SettingError, ValueError) as exc:
        raise bad(f"has a bad number: {exc}") from None
    return Rule(text.strip(), methods, pattern, is_regex, regex, cap, stall)


def split_rules(raw):
    """The rules of ``HEARTWORKER_ROUTE_CAPS``: separated by ``;``, blanks skipped."""
    return [r for r in (part.strip() for part in raw.split(";")) if r]


def parse_rules(texts, setting):
    """The rules given (a list of str), checked; a SettingError names the first bad one."""
    return tuple(parse_rule(text, setting) for text in texts)


# -- what to warn about at boot ---------------------------------------------------
_FILLERS = ("", "q", "Zq9-._~%20(", "q/Zq9")   # what a wildcard may stand for, in turn


def _samples(rule):
    """Paths the glob ``rule`` matches, one wildcard filler at a time (each one a path it
    matches: a segment filler for ``*``, any for ``**``)."""
    parts = re.split(r"(\*\*|\*)", rule.pattern)
    for filler in _FILLERS:
        star = filler.replace("/", "") or filler
        yield "".join(filler if p == "**" else star if p == "*" else p for p in parts)


def shadowed_by(rule, earlier):
    """Does ``earlier`` match every request ``rule`` does (so ``rule`` never applies)?

    Exact for identical patterns; for a glob ``rule``, ``earlier`` must match
    its path with each wildcard filler in turn (empty, plain, odd characters,
    several segments), for every method ``rule`` names.  A regular expression
    ``rule`` is shadowed only by an identical one.  It may miss a shadowing;
    it never warns of one that does not exist for the paths it tried.
    """
    if earlier.methods is not None and (rule.methods is None
                                        or not rule.methods <= earlier.methods):
        return False
    if rule.is_regex:
        return earlier.is_regex and earlier.pattern == rule.pattern
    probe = next(iter(rule.methods)) if rule.methods else "GET"
    return all(earlier.matches(probe, path) for path in _samples(rule))


def warnings(rules, setting):
    """The boot WARNINGs: rules an earlier one shadows, methods that are unknown."""
    found = []
    for i, rule in enumerate(rules):
        for earlier in rules[:i]:
            if shadowed_by(rule, earlier):
                found.append(f"{setting}: the rule {rule.text!r} never applies: the "
                             f"earlier rule {earlier.text!r} matches every request it does "
                             f"(the first matching rule wins)")
                break
        for method in sorted((rule.methods or set()) - KNOWN_METHODS):
            found.append(f"{setting}: the rule {rule.text!r} names the method {method!r}, "
                         f"which is not an HTTP method heartworker knows")
    return found


# -- matching ----------------------------------------------------------------------
class Routes:
    """The rules, compiled for matching: :meth:`match` is on every request's path.

    Consecutive glob rules become one regular expression over ``"METHOD PATH"``
    (a named group per rule: the first that matches wins, as alternation
    does), tried only if the path begins with one of their literal prefixes
    (what comes before the first ``*``); a regular expression's rule is tried
    on its own, its methods first.
    """

    def __init__(self, rules):
        self.rules = tuple(rules)
        self.chunks = []      # (prefixes or None, fullmatch, rules) / (None, search, rule, methods)
        # A path that begins with none of the globs' prefixes can match only a regex rule
        # (None: some glob begins with '*', so every path may match one).
        prefixes = [r.pattern.split("*", 1)[0] for r in self.rules if not r.is_regex]
        self.prefixes = None if not all(prefixes) else tuple(
            p for p in set(prefixes) if not any(p != q and p.startswith(q) for q in prefixes))
        run = []
        for rule in self.rules + (None,):
            if rule is not None and not rule.is_regex:
                run.append(rule)
                continue
            if run:
                branches = "|".join(f"(?P<r{i}>{_method_regex(r)} {glob_regex(r.pattern)})"
                                    for i, r in enumerate(run))
                prefixes = tuple(r.pattern.split("*", 1)[0] for r in run)
                self.chunks.append((prefixes if all(prefixes) else None,
                                    re.compile(branches, re.DOTALL).fullmatch, tuple(run)))
                run = []
            if rule is not None:
                self.chunks.append((None, rule.regex.search, rule, rule.methods))
        self.regexes = [chunk[1:] for chunk in self.chunks if len(chunk) == 4]

    def match(self, method, path):
        """The first rule that matches ``method`` and ``path`` (PATH_INFO), or None."""
        if self.prefixes is not None and not path.startswith(self.prefixes):
            for search, rule, methods in self.regexes:     # (the usual request: no glob's)
                if (methods is None or method in methods) and search(path) is not None:
                    return rule
            return None
        for chunk in self.chunks:
            if len(chunk) == 4:                        # a regular expression's rule
                _, search, rule, methods = chunk
                if (methods is None or method in methods) and search(path) is not None:
                    return rule
                continue
            prefixes, fullmatch, rules = chunk
            if prefixes is not None and not path.startswith(prefixes):
                continue
            m = fullmatch(f"{method} {path}")
            if m is not None:
                return rules[int(m.lastgroup[1:])]
        return None

    def __bool__(self):
        return bool(self.rules)

    def __len__(self):
        return len(self.rules)


@lru_cache(maxsize=None)
def _methods_regex(methods):
    return "(?:" + "|".join(re.escape(m) for m in sorted(methods)) + ")"


def _method_regex(rule):
    return "[^ ]*" if rule.methods is None else _methods_regex(rule.methods)


# -- in the worker ---------------------------------------------------------------------
def in_route_sections(app, routes, registry, context):
    """Wrap the WSGI app: a request that a rule matches runs in the rule's section.

    The section is anchored at the app's caller, Gunicorn's ``handle_request``,
    so that it covers the response's body and its writing too, and it is noted
    on ``context()`` (the request's owner) for :func:`leave_route` to close
    when that returns (``HeartWorkerMixin.handle_request``).  Call it as
    Gunicorn calls the app: from ``handle_request``, this wrapper outermost.
    """
    match = routes.match

    def app_in_its_route(environ, start_response):
        rule = match(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if rule is not None:
            context().heartworker_route = rule.open(registry, sys._getframe(1))
        return app(environ, start_response)

    return app_in_its_route


def leave_route(registry, here):
    """Close the route section noted on ``here`` (the request's owner), if one is open."""
    section = getattr(here, "heartworker_route", None)
    if section is not None:
        here.heartworker_route = None
        registry.exit(section)


def hint(method, path, launcher):
    """What a line about a request ended at ``--timeout`` outside every section adds:
    the one-line fix that would have let it finish."""
    rule = shlex.quote(f"{method} {path}=SECONDS")
    fix = f"--route-cap {rule}" if launcher else f"-e HEARTWORKER_ROUTE_CAPS={rule}"
    return (f" (if it may take longer, give it a cap of its own with no code change: "
            f"{fix})")
