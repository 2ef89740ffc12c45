"""Route caps: a request that matches a rule runs inside a section named after it.

A rule is ``[METHODS ]PATTERN=SECONDS[,stall=SECONDS]``:

* ``METHODS``: a comma list (``GET,HEAD``); none means any method.
* ``PATTERN`` is matched against ``PATH_INFO`` (decoded, no query string).  A
  glob, segment by segment: ``*`` matches within one path segment (no ``/``),
  ``**`` is a whole segment that matches zero or more segments; everything
  else is literal, and the whole path must match.  ``~ `` before it makes it a
  regular expression, searched in the path (anchor it with ``^`` and ``$``).
* ``SECONDS`` is the cap (it replaces ``--timeout`` for that request, longer
  or shorter); ``stall`` the longest the request may go without
  ``heartworker.progress()``.

The first matching rule, in the order given, wins.  Rules are checked at boot
(:func:`parse_rules`: a bad one is a :class:`~heartworker.SettingError` naming
the setting and the rule) and compiled once (:class:`Routes`).  A glob is
matched without backtracking (:class:`Glob`: leftmost, with ``str.find``), so
no path a client sends makes it slow; a path that begins with none of the
globs' literal prefixes is told apart by one ``str.startswith``.
"""

import re
import shlex
import sys
from urllib.parse import unquote_to_bytes

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
MAX_RULE = 4096                     # characters in a rule
MAX_SEGMENTS = 32                   # segments in a glob: matching costs path x group at worst


class Route(Section):
    """The section a request runs in when a rule matches it (log lines: ``route '...'``)."""

    __slots__ = ()
    kind = "route"


class Rule:
    """One rule, checked: ``methods`` (a frozenset, or None for any), ``pattern``
    (the text after the methods), ``regex`` (a compiled ``re`` pattern, or a
    :class:`Glob`), ``cap``, ``stall``."""

    __slots__ = ("text", "methods", "pattern", "is_regex", "regex", "cap", "stall", "name")

    def __init__(self, text, methods, pattern, is_regex, regex, cap, stall):
        self.text, self.methods, self.pattern = text, methods, pattern
        self.is_regex, self.regex, self.cap, self.stall = is_regex, regex, cap, stall
        # what its section is called: ``POST /export/**`` (the methods and the pattern)
        shown = ",".join(sorted(methods)) + " " if methods else ""
        self.name = f"{shown}{'~ ' if is_regex else ''}{pattern}"

    def open(self, registry, frame):
        """Open this rule's section for the calling owner, anchored at ``frame`` (see
        :func:`in_route_sections`); None if the owner is not one that vouches."""
        section = Route(registry, self.name, self.cap, INF, None, frame, 0.0, True, self.stall)
        return section if registry.add(section, frame) else None

    def matches(self, method, path):
        """Does the request match (``path``: PATH_INFO)?"""
        if self.methods is not None and method not in self.methods:
            return False
        if self.is_regex:
            return self.regex.search(path) is not None
        return self.regex.match(path.split("/"))

    def __repr__(self):
        return f"Rule({self.text!r})"


class Glob:
    """A glob, matched segment by segment in linear time.

    The pattern's segments are cut at its ``**`` segments into groups: the
    first group matches the path's first segments, the last its last ones, and
    each group between is found leftmost in what is left (``**`` takes any
    segments, so the leftmost place is never wrong).  Within a segment, the
    text between ``*``s is found the same way (``str.find``).  No backtracking:
    at worst a group is tried at each segment of the path (a glob has at most
    ``MAX_SEGMENTS``).
    """

    __slots__ = ("groups", "prefix")

    def __init__(self, pattern):
        self.groups = [[]]
        for segment in pattern.split("/"):
            if segment == "**":
                self.groups.append([])
            else:
                self.groups[-1].append(tuple(segment.split("*")))
        # What every path it matches begins with: the text before its first '*' (less
        # the '/' before a '**', which may stand for no segment at all).
        head = pattern.split("*", 1)[0]
        self.prefix = head[:-1] if head.endswith("/") and pattern[len(head):].startswith(
            "**") else head

    def match(self, segments):
        """Does the path (``path.split("/")``) match?"""
        groups = self.groups
        if len(groups) == 1:
            return len(segments) == len(groups[0]) and _each(groups[0], segments, 0)
        first, last = groups[0], groups[-1]
        end = len(segments) - len(last)
        if end < len(first) or not _each(first, segments, 0) or not _each(last, segments, end):
            return False
        at = len(first)
        for group in groups[1:-1]:
            while at + len(group) <= end and not _each(group, segments, at):
                at += 1
            if at + len(group) > end:
                return False
            at += len(group)
        return True


def _each(group, segments, at):
    """Does each segment pattern of ``group`` match its segment, from ``segments[at]`` on?"""
    for i, parts in enumerate(group):
        text = segments[at + i]
        if len(parts) == 1:
            if text != parts[0]:
                return False
            continue
        first, last = parts[0], parts[-1]
        if len(text) < len(first) + len(last) or not text.startswith(first) \
                or not text.endswith(last):
            return False
        pos, stop = len(first), len(text) - len(last)
        for middle in parts[1:-1]:
            pos = text.find(middle, pos, stop)
            if pos < 0:
                return False
            pos += len(middle)
    return True


def wsgi_text(text):
    """``text`` as PATH_INFO holds it: its UTF-8 bytes read as latin-1 (PEP 3333)."""
    return text.encode("utf-8").decode("latin-1")


def parse_rule(text, setting):
    """One rule, checked, or a SettingError naming ``setting`` and the rule."""
    def bad(why):
        return SettingError(f"{setting}: the rule {text!r} {why} (a rule is {_FORM}, "
                            f"for example 'POST /export/**=600,stall=60')")

    if not isinstance(text, str):
        raise SettingError(f"{setting}: a rule must be a str, not {type(text).__name__}")
    if len(text) > MAX_RULE:
        raise SettingError(f"{setting}: a rule of {len(text)} characters (at most {MAX_RULE})")
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
            regex = re.compile(wsgi_text(pattern), re.DOTALL)
        except (re.error, RecursionError, OverflowError) as exc:
            raise bad(f"has a regular expression that does not compile ({exc})") from None
    else:
        if not pattern.startswith(("/", "*")):
            raise bad("has a pattern that never matches (PATH_INFO begins with '/'; "
                      "'~ ' before a regular expression)")
        if "=" in pattern:     # (a typo in the numbers' part, as often as a path's '=')
            raise bad("has '=' in its pattern (a path with '=' needs a regular expression, "
                      "'~ ^/a=b$=5'" + ("; a list holds one rule per item" if ";" in text
                                        else "") + ")")
        if pattern.count("/") >= MAX_SEGMENTS:    # (a group is tried at each segment)
            raise bad(f"has over {MAX_SEGMENTS} segments")
        if any("**" in segment and segment != "**" for segment in pattern.split("/")):
            raise bad("has '**' inside a segment ('**' is a whole segment, as in "
                      "'/export/**/*.csv'; '*' stays within one)")
        regex = Glob(wsgi_text(pattern))
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
    parts = re.split(r"(\*\*|\*)", wsgi_text(rule.pattern))
    for filler in _FILLERS:
        star = filler.replace("/", "") or filler
        yield "".join(filler if p == "**" else star if p == "*" else p for p in parts)


def shadowed_by(rule, earlier):
    """Does ``earlier`` match every request ``rule`` does (so ``rule`` never applies)?

    Exact for identical patterns; for two globs, ``earlier`` must match
    ``rule``'s path with each wildcard filler in turn (empty, plain, odd
    characters, several segments), for every method ``rule`` names.  A
    regular expression shadows, or is shadowed by, only an identical one.  It
    may miss a shadowing; it never warns of one that does not exist for the
    paths it tried.
    """
    if earlier.methods is not None and (rule.methods is None
                                        or not rule.methods <= earlier.methods):
        return False
    if rule.is_regex or earlier.is_regex:     # (a regex's reach is not tried: a lookahead
        return earlier.is_regex and earlier.pattern == rule.pattern   # may spare a path)
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
    """The rules, compiled for matching: :meth:`match` is on every request's path."""

    def __init__(self, rules):
        self.rules = tuple(rules)
        self.regex_rules = tuple(r for r in self.rules if r.is_regex)
        # A path that begins with none of the globs' prefixes can match only a regex
        # rule (None: some glob begins with '*', so every path may match one).
        prefixes = [r.regex.prefix for r in self.rules if not r.is_regex]
        self.prefixes = None if not all(prefixes) else tuple(
            p for p in set(prefixes) if not any(p != q and p.startswith(q) for q in prefixes))

    def match(self, method, path):
        """The first rule that matches ``method`` and ``path`` (PATH_INFO), or None."""
        rules = self.rules
        if self.prefixes is not None and not path.startswith(self.prefixes):
            rules = self.regex_rules            # (the usual request: no glob's)
        segments = None
        for rule in rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            if rule.is_regex:
                if rule.regex.search(path) is not None:
                    return rule
                continue
            if segments is None:
                segments = path.split("/")
            if rule.regex.match(segments):
                return rule
        return None


# -- in the worker ---------------------------------------------------------------------
def in_route_sections(app, routes, registry, context):
    """Wrap the WSGI app: a request that a rule matches runs in the rule's section.

    The section is anchored at the frame of ``HeartWorkerMixin.serve`` (noted
    on ``context()``, the request's owner, as ``heartworker_serving``), which
    runs Gunicorn's request handling and closes the section when it returns: it
    covers the app, its response body and the writing of it, so that a slow
    client does not get the worker killed at ``--timeout`` either.  A
    cancellation never lands in the app's ``close()``: the body returned is
    wrapped so that the section is left before it runs (a file wrapper, which
    Gunicorn sends itself, is returned as it is); one that lands while Gunicorn
    sends the head closes the connection (``answer.in_send_headers``).
    """
    match = routes.match
    from gunicorn.workers.base_async import ALREADY_HANDLED

    def app_in_its_route(environ, start_response):
        rule = match(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        if rule is None:
            return app(environ, start_response)
        here = context()
        anchor = getattr(here, "heartworker_serving", None) or sys._getframe(1)
        here.heartworker_route = rule.open(registry, anchor)
        body = app(environ, start_response)
        if body is ALREADY_HANDLED or isinstance(body, environ["wsgi.file_wrapper"]):
            return body
        return RouteBody(body, registry, here)

    return app_in_its_route


class RouteBody:
    """A response body whose ``close()`` leaves the route's section before the app's."""

    __slots__ = ("body", "registry", "here")

    def __init__(self, body, registry, here):
        self.body, self.registry, self.here = body, registry, here

    def __iter__(self):
        return iter(self.body)          # (Gunicorn iterates the app's own iterator)

    def close(self):
        leave_route(self.registry, self.here)
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def leave_route(registry, here):
    """Close the route section noted on ``here`` (the request's owner), if one is open."""
    section = getattr(here, "heartworker_route", None)
    if section is not None:
        here.heartworker_route = None
        registry.exit(section)


# Characters of a path that a glob's rule cannot say as they are: its hint is a regex.
_NOT_GLOB = re.compile(r"[=;*~\s'\"\\]|[^\x21-\x7e]")


def hint(method, raw_path, launcher):
    """What a line about a request ended at ``--timeout`` outside every section adds:
    the one-line fix that would have let it finish, in the form the rules are given
    (``launcher``: a ``--route-cap``; else the environment's variable).

    The rule is matched against ``PATH_INFO``, decoded: the hint decodes the
    request's raw path likewise, and says a path that a glob cannot (``=``,
    ``;``, ``*``, spaces, non-ASCII...) as a regular expression.
    """
    raw = unquote_to_bytes(raw_path)
    try:
        path = raw.decode("utf-8")
        escaped = re.escape(path)
    except UnicodeDecodeError:      # not UTF-8 text: its bytes, as '\xff' in a regex
        path = None
        escaped = "".join(re.escape(chr(b)) if b < 0x80 else f"\\x{b:02x}" for b in raw)
    if path is not None and not _NOT_GLOB.search(path):
        pattern = path
    else:
        pattern = "~ ^" + escaped.replace(";", "\\x3b") + "$"
    rule = shlex.quote(f"{method} {pattern}=SECONDS")
    fix = f"--route-cap {rule}" if launcher else f"HEARTWORKER_ROUTE_CAPS={rule}"
    where = "" if launcher else " (beside the rules it may hold already: ';' between them)"
    return (f" (if it may take longer, give it a cap of its own with no code change: "
            f"{fix}{where})")
