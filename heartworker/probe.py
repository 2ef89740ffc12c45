"""Is an event loop free?  Asked from the guard thread by a numbered callback posted to it.

The gevent worker's hub and the uvicorn worker's asyncio loop are probed the same
way (``ggevent.py``, ``tasks.py``): the guard posts a callback, thread-safely, and
the loop answers when it runs it.  The loop runs its callbacks in order, so the
numbers also tell whether a cancellation posted to it (a throw into a waiting
greenlet, a ``task.cancel()``) has run.
"""

from time import monotonic


class LoopProbe:
    """A flavour's probe of its loop; ``post(callback, *args)`` is the flavour's."""

    def __init__(self):
        # The callbacks posted to the loop run in order, and are numbered: the latest
        # probe's number, the latest one the loop answered, and each cancelled section's
        # first cancellation (``section.thrown``).  Only the guard thread posts.
        self.posted = self.probe_posted = self.answered = 0
        self.probe_sent = -float("inf")     # when the latest probe was posted
        self.probe_seen = -float("inf")     # when the loop last answered one

    def post(self, callback, *args):
        raise NotImplementedError

    def loop_seen(self, now):
        """When the loop last answered a probe (None: the last one still waits, the loop
        is blocked); posts the next probe."""
        if self.answered < self.probe_posted:
            return None                     # the last probe is still waiting: loop blocked
        seen = self.probe_seen
        self.posted += 1
        self.probe_posted, self.probe_sent = self.posted, now
        self.post(self._answer, self.posted)
        return seen

    def _answer(self, number):              # runs in the loop
        self.probe_seen = monotonic()
        self.answered = number

    def post_cancel(self, section, cancel, *args):
        """Post ``cancel(*args)``, a waiting ``section``'s cancellation, to the loop."""
        self.posted += 1
        if not section.thrown:
            section.thrown = self.posted
        self.post(cancel, *args)

    def escalates(self, section, running):
        """A cancelled section still running after the grace gets the worker aborted.

        Except a waiting owner whose cancellation has not reached it because
        another blocks the loop (its exception is posted to the loop): its grace
        has not really begun.  That wait is bounded: the blocking code is inside
        its own section (ended at its deadline) or is killed at ``--timeout``.
        Once the loop is free, the cancellation runs at once.  "Free" means the
        loop answered a probe posted *after* the section's first cancellation:
        it runs its callbacks in order, so that cancellation has run by then (and,
        if it was not delivered, found the owner mid-update; the ones sent again
        every ``RESEND`` do not put it off).  A probe posted before it may be
        answered a moment before it runs: the guard, looking in between, aborted
        the worker (found when the suite first ran in parallel).
        """
        return running or section.delivered or self.answered > section.thrown

    def stock_would_kill(self, guard, section, now):
        """Stock is killed only when the loop is blocked for --timeout: by this section's
        owner, running right now, with the probe unanswered that long."""
        return (self.answered < self.probe_posted
                and now - self.probe_sent >= guard.registry.window
                and guard.registry.inside_section(guard.current_frame(), section))
