"""What a worker does at its signals: SIGTERM's graceful limit, SIGABRT's abort, the
cancellation signal, and the ``504`` of a request that one of them ended."""

import os
import sys
from time import monotonic

from .answer import answer_timeout
from .section import SectionCapExceeded

ANSWER_TIME = 1.0   # seconds an aborting worker has to answer before the arbiter's SIGKILL
GRACEFUL_ANSWER = 0.25   # at most: sections end this much before --graceful-timeout runs out


def graceful_limit(graceful_timeout):
    """Seconds from SIGTERM to the end of every section (the graceful stop's limit).

    A little less than ``--graceful-timeout``: when the arbiter stops, it starts
    that clock just before it sends SIGTERM and SIGKILLs its workers the moment
    it runs out, so a section cancelled at exactly that time would lose its 504.
    """
    return graceful_timeout - min(GRACEFUL_ANSWER, graceful_timeout / 4.0)


class Signals:
    """The worker's signal handlers (a part of the worker mixin)."""

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self.stopping()

    def stopping(self):
        """The graceful stop began (SIGTERM): no section is vouched for past
        ``--graceful-timeout`` from now.  Safe in a signal handler."""
        self.status_changed()
        if self.heart is not None:
            self.heart.set_limit(monotonic() + graceful_limit(self.cfg.graceful_timeout))

    # Does the worker's own handle_abort log the stack the abort's signal found? (gevent's)
    logs_abort_stack = False
    # Does faulthandler dump every thread at SIGABRT, or the serving one? (aftermath.py)
    dump_all_threads = False
    # Does the arbiter end a request outside sections at --timeout, whatever a longer
    # HEARTWORKER_REQUEST_TIMEOUT says?  (The sync worker's: its loop is the request's.)
    request_limit_ends_first = True

    def give_answer_time(self, now):
        """Keep the arbiter's SIGKILL off for ``ANSWER_TIME``: the first thing an abort does.

        The arbiter sends SIGKILL at its next look if the heartbeat is still
        stale, and it looks again at every signal it gets (a worker's exit):
        often milliseconds after its SIGABRT, before this abort has answered.
        Stock waits for that look too.  Safe in a signal handler; nothing is
        vouched for after it."""
        if self.heart is not None and self.cfg.timeout:
            self.heart.aborting(now - self.cfg.timeout + ANSWER_TIME)

    def handle_abort(self, sig, frame):
        guard = self.guard
        now = monotonic()
        self.give_answer_time(now)
        # The raw dump faulthandler just wrote, taken first (a SIGKILL from here on must
        # not have the next worker count this startup's end once more).
        dump = self.aftermath.take_own() if self.aftermath is not None else ""
        threads = self.flavor.frames_at_abort() if self.flavor is not None else None
        if guard is not None and guard.aborting:
            self.abort_cause = guard.abort_cause      # (the guard logged the stack)
        else:       # the arbiter's: a section past its deadline means the GIL was held
            late = self.heart.past_deadline(frame, now, threads) if self.heart else None
            if late is not None:
                self.abort_cause = guard.arbiter_cause(late, now)
            elif threads is None:
                self.abort_cause = f"the request ran longer than --timeout ({self.cfg.timeout:g} s)"
                self.abort_outside = self.startup is None
            else:           # the threaded worker's loop notifies whatever its threads do
                self.abort_cause = (f"Gunicorn's main loop did not notify within --timeout "
                                    f"({self.cfg.timeout:g} s)")
            # Python runs the abort: in a request's code a readable traceback is logged
            # (answer.py; gevent's handle_abort), and the dump would print the same
            # stacks again.  No traceback shows the startup's or the request threads'.
            if dump and not self.logs_abort_stack and (self.startup is not None
                                                       or threads is not None):
                self.log.error("heartworker: worker (pid %s) aborted by the arbiter: %s. Its "
                               "stacks when it got SIGABRT (most recent call first):\n%s",
                               os.getpid(), self.abort_cause, dump)
        super().handle_abort(sig, frame)

    def handle_cancel(self, sig, frame):
        """CANCEL_SIGNAL: raise SectionCapExceeded if ``frame`` runs a cancelled section's code."""
        if self.heart is not None:
            self.land_cancellation(frame)

    def land_cancellation(self, frame):
        """Raise SectionCapExceeded here if ``frame`` (this thread's code) is in a cancelled section.

        Only inside it, never in heartworker's own bookkeeping, never while a
        cancellation is being handled here (a ``finally`` or ``except`` block as
        one unwinds: the guard sends the signal again while it runs on), and
        never once the worker is being aborted (it would replace the abort's
        SystemExit).  A signal that finds the thread in the bookkeeping is not
        lost: it is landed where the bookkeeping returns to the section's code
        (``long_section.__enter__``/``__exit__``, ``progress``), so that code
        that spends most of its time entering and leaving sections is ended as
        surely as any other.
        """
        reg = self.heart
        if self.abort_cause is not None:
            return                  # the worker is being aborted: its SystemExit must unwind
        if not reg.interruptible(frame):
            reg.cancel_waits = True
            return
        reg.cancel_waits = False
        if isinstance(sys.exc_info()[1], SectionCapExceeded):
            return                  # one is being handled here: after it, if still due
        why = self.guard.take_cancellation(reg.owner() if reg.owner else None, frame)
        if why is not None:
            raise SectionCapExceeded(why)

    def handle_error(self, req, client, addr, exc):
        if req is not None:
            if isinstance(exc, SectionCapExceeded):
                return answer_timeout(self, req, client, addr, str(exc), raised=exc)
            if isinstance(exc, SystemExit) and self.abort_cause is not None:
                by_arbiter = self.guard is None or not self.guard.aborting
                return answer_timeout(self, req, client, addr, self.abort_cause,
                                      exc if by_arbiter else None, raised=exc)
        return super().handle_error(req, client, addr, exc)
