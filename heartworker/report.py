"""What operators see of long work: report lines, the process title, statsd.

All of it runs in the guard thread, on the guard's own wake-ups; nothing here
is on a section's path.  Once per guard step (a few times a second while a
section is open) :meth:`Watch.look` goes through the owners whose outermost
section is older than the report interval or than ``--timeout``, oldest
first (the registry's ``stacks`` keep the order in which owners opened their
sections), and stops at the first younger one, so its cost is the number of
long-running sections, never the number of open ones.

* Every ``HEARTWORKER_REPORT_EVERY`` seconds of a section's life, an INFO
  line: the section (and the innermost one it is in), elapsed, cap, the last
  progress note and its age.  Under gevent, one step logs ``REPORT_LINES``
  sections at most, then a count of the others.
* While a section is older than ``--timeout``, the process title (when
  ``setproctitle`` is installed, as Gunicorn uses it) shows the oldest one,
  its elapsed time and its last note; it is put back afterwards.
* ``heartworker.saved``: a section seen older than ``--timeout`` that then
  ended on its own (not cancelled): a request stock Gunicorn would have killed.
"""

import math

INF = math.inf
REPORT_LINES = 5        # report lines per guard step at most (the rest are counted)


def duration(seconds):
    """``14m02s``, ``2h03m``, ``4.2s``: short and exact enough for a log line."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def shown(note, limit=200):
    """A progress note as a log line or a process title can hold it, whatever it is."""
    try:
        text = note if isinstance(note, str) else str(note)
    except Exception:
        text = f"<unprintable {type(note).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def last_progress(section, now):
    """``last progress 'shard 4/10' 3.2s ago``, or ``no progress reported``."""
    if section.progress_at <= section.started:
        return "no progress reported"
    note = f" '{shown(section.note)}'" if section.note is not None else ""
    return f"last progress{note} {duration(now - section.progress_at)} ago"


class Title:
    """The worker's process title, through ``setproctitle`` if Gunicorn could use it."""

    def __init__(self):
        try:
            from setproctitle import getproctitle, setproctitle
        except ImportError:
            getproctitle = setproctitle = None
        self.get, self.set = getproctitle, setproctitle
        self.base = self.shown = None

    def show(self, text):
        """Show ``text`` after Gunicorn's title; None puts Gunicorn's back."""
        if self.set is None or text == self.shown:
            return
        if self.base is None:
            self.base = self.get()          # Gunicorn's, read when first needed
        self.shown = text
        self.set(self.base if text is None else f"{self.base} [{text}]")


class Watch:
    """Looks at the long sections in the guard's region; says what it saw outside it.

    :meth:`look` only reads the registry and builds text (in the region: the
    lock is held); :meth:`emit` then logs, sets the title and counts, after
    the region, so that no log handler's lock (a gevent lock, a slow stderr)
    is ever waited for while the serving threads wait for the registry's.
    """

    def __init__(self, registry, log, *, every, window, count, title=None,
                 stock_would_kill=None):
        self.registry = registry
        self.log = log
        self.every = every or INF           # 0: no report lines
        self.window = window or INF         # --timeout (0: none)
        self.count = count                  # the guard's statsd counter
        self.title = title if title is not None else Title()
        # (section, now) -> would stock Gunicorn have killed the worker by now for it?
        self.stock_would_kill = stock_would_kill or (lambda section, now: True)
        self.long = set()                   # sections stock would have killed, not ended yet
        self.reported = {}                  # section -> report lines logged for it
        self.startup = None                 # the startup section: never counted as saved
        self.enabled = False                # from when the worker's own flavour is installed
        self.lines, self.saved, self.shown = [], 0, None    # what emit() does next

    def look(self, now):
        """Collect the report lines, the title and the saved count; return when to look next.

        Call in a region with the lock held (it reads the registry's stacks).
        """
        if not self.enabled:
            return INF
        reg, every, window = self.registry, self.every, self.window
        old = min(every, window)
        due, oldest, next_at = [], None, INF
        for stack in reg.stacks.values():
            outer = stack[0]
            age = now - outer.started
            if age < old:
                next_at = min(next_at, outer.started + old)
                break                       # owners are in opening order: the rest are younger
            if age >= window:
                if outer is not self.startup and outer not in self.long \
                        and self.stock_would_kill(outer, now):
                    self.long.add(outer)
                if oldest is None:
                    oldest = stack
            if age >= every:
                times = int(age // every)
                if times > self.reported.get(outer, 0):
                    self.reported[outer] = times
                    due.append(stack)
                next_at = min(next_at, outer.started + (times + 1) * every)
        self.settle()
        self.lines += self.report(due, now)
        if oldest is None:
            self.shown = None
        else:
            outer = oldest[0]           # (progress reaches every section of the stack)
            note = f" {shown(outer.note)}" if outer.note is not None else ""
            self.shown = f"{self.where(oldest)} {duration(now - outer.started)}{note}"
            next_at = min(next_at, now + 1.0)   # the title counts seconds
        return next_at

    def emit(self):
        """Log, set the title and count what :meth:`look` saw (outside the region)."""
        lines, self.lines = self.lines, []
        for line in lines:
            self.log.info("%s", line)
        saved, self.saved = self.saved, 0
        for _ in range(saved):
            self.count("heartworker.saved")
        try:
            self.title.show(self.shown)
        except Exception:               # (a title that cannot be set is never fatal)
            self.title.set = None

    def settle(self):
        """Count the long sections that ended on their own since the last look."""
        ended = [s for s in self.long if s.closed]
        for section in ended:
            self.long.discard(section)
            if section.why is None:
                self.saved += 1
        for section in [s for s in self.reported if s.closed]:
            del self.reported[section]

    @staticmethod
    def where(stack):
        outer, inner = stack[0], stack[-1]
        where = outer.label()
        if inner is not outer:
            where += f" in {inner.describe()}"
        return where

    def report(self, due, now):
        lines = [f"heartworker: {self.where(stack)} running for "
                 f"{duration(now - stack[0].started)} (cap {duration(stack[0].cap)}), "
                 f"{last_progress(stack[0], now)}" for stack in due[:REPORT_LINES]]
        if len(due) > REPORT_LINES:
            lines.append(f"heartworker: and {len(due) - REPORT_LINES} more sections running "
                         f"for over {duration(self.every)}")
        return lines
