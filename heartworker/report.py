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


def last_progress(section, now):
    """``last progress 'shard 4/10' 3.2s ago``, or ``no progress reported``."""
    if section.progress_at <= section.started:
        return "no progress reported"
    note = f" {section.note!r}" if section.note is not None else ""
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
    def __init__(self, registry, log, *, every, window, count, title=None):
        self.registry = registry
        self.log = log
        self.every = every or INF           # 0: no report lines
        self.window = window or INF         # --timeout (0: none)
        self.count = count                  # the guard's statsd counter
        self.title = title if title is not None else Title()
        self.long = set()                   # sections seen older than --timeout, not ended yet
        self.reported = {}                  # section -> report lines logged for it
        self.startup = None                 # the startup section: never counted as saved

    def look(self, now):
        """Report, set the title, count what was saved; return when to look next.

        Call in a region with the lock held (it reads the registry's stacks).
        """
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
                if outer is not self.startup:
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
        self.report(due, now)
        if oldest is None:
            self.title.show(None)
        else:
            outer = oldest[0]           # (progress reaches every section of the stack)
            note = f" {outer.note}" if outer.note is not None else ""
            self.title.show(f"{self.where(oldest)} {duration(now - outer.started)}{note}")
            next_at = min(next_at, now + 1.0)   # the title counts seconds
        return next_at

    def settle(self):
        """Count the long sections that ended on their own since the last look."""
        ended = [s for s in self.long if s.closed]
        for section in ended:
            self.long.discard(section)
            if section.why is None:
                self.count("heartworker.saved")
        for section in [s for s in self.reported if s.closed]:
            del self.reported[section]

    @staticmethod
    def where(stack):
        outer, inner = stack[0], stack[-1]
        where = f"section {outer.describe()}"
        if inner is not outer:
            where += f" in {inner.describe()}"
        return where

    def report(self, due, now):
        for stack in due[:REPORT_LINES]:
            outer = stack[0]
            self.log.info("heartworker: %s running for %s (cap %s), %s", self.where(stack),
                          duration(now - outer.started), duration(outer.cap),
                          last_progress(outer, now))
        if len(due) > REPORT_LINES:
            self.log.info("heartworker: and %d more sections running for over %s",
                          len(due) - REPORT_LINES, duration(self.every))
