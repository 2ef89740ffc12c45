"""What the guard's CRITICAL lines and the client's 504 say when a deadline ends a section.

A part of :class:`~heartworker.guard.Guard`: these read its registry, its
grace and the startup section, and write nothing.
"""

from .deadline import Request
from .report import last_progress
from .settings import STARTUP_CAP, STARTUP_STALL


class Messages:
    """The guard's words for each ending (see docs/operating.md: what the log shows)."""

    def deadline_message(self, section, due, now):
        """The CRITICAL line's first part: ``section`` ends because ``due``'s deadline passed.

        ``due`` is ``section`` itself, or a section enclosing it.
        """
        reg = self.registry
        elapsed = max(0.0, now - section.started)
        note = ""
        if isinstance(section, Request) and reg.limit >= section.deadline:
            return (f"heartworker: {section.label()} ran longer than "
                    f"{self.request_limit_name} ({section.cap:g} s) outside every section: "
                    f"{elapsed:.2f} s elapsed")
        if reg.limit < min(due.deadline, due.stall_at):
            why = "ran past the graceful timeout after SIGTERM"
        elif reg.stalled(due):
            quiet = (f"no progress for {now - due.progress_at:.2f} s "
                     f"(stall limit {due.stall:g} s; {last_progress(due, now)})")
            why = (f"made {quiet}" if due is section else
                   f"is in {due.label()}, which made {quiet}")
            if due is self.startup:
                note = self.startup_note(STARTUP_STALL, due.stall)
        else:
            bound = section.bound or (due if due is not section else None)
            if bound is not None:
                why = (f"ran past the deadline of its enclosing {bound.label()} "
                       f"(cap {bound.cap:g} s)")
            else:
                why = "ran past its cap"
            if (bound or section) is self.startup:
                note = self.startup_note(STARTUP_CAP, self.startup.cap)   # too small, or a hang
        return (f"heartworker: {section.label()} {why}: "
                f"{elapsed:.2f} s elapsed, cap {section.cap:g} s{note}")

    route_hint = None    # (method, path) -> the one-line fix (worker.route_hint)
    request_limit_name = "--timeout"   # what limits a request outside every section

    def fix_for(self, section):
        """What the log adds for a request ended at --timeout outside every section: the
        route cap that would have let it finish (not the 504's body: the operator's)."""
        if (isinstance(section, Request) and self.registry.limit >= section.deadline
                and self.route_hint is not None):
            return self.route_hint(*section.name.split(" ", 1))
        return ""

    def overdue_message(self, section, cancelled_at, now):
        bound = section.bound
        deadline = "" if bound is None else (f"; the deadline of its enclosing "
                                             f"{bound.label()}, cap {bound.cap:g} s")
        return (f"heartworker: {section.label()} is still running "
                f"{now - cancelled_at:.2f} s after its deadline "
                f"({now - section.started:.2f} s elapsed, cap {section.cap:g} s{deadline}) "
                f"although it was cancelled: the cancellation did not take "
                f"({self.grace_name}={self.grace:g})")

    def arbiter_cause(self, section, now):
        """Why the arbiter's abort ended ``section``, found past its deadline (the 504's cause).

        The guard acts at every deadline, so the arbiter finds a section past it
        only if no Python code could run (C code held the GIL), or if a section
        that was cancelled ran on, keeping the serving loop from notifying,
        for ``--timeout`` before the grace was over (a grace longer than that).
        """
        if section.why is None:
            message = self.deadline_message(section, section.bound or section, now)
            return message.replace("heartworker: ", "", 1) + " while C code held the GIL"
        late = now - self.registry.deadline_of(section)
        why = (f"before {self.grace_name}={self.grace:g} was over"
               if self.grace > self.registry.window else "(C code held the GIL)")
        return (f"{section.why}; it was cancelled, but was still running {late:.2f} s later: "
                f"the cancellation did not take, and the arbiter's --timeout "
                f"({self.registry.window:g} s) ended the worker {why}")
