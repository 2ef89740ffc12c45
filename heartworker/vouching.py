"""The vouching rule, and the one writer of the heartbeat file.

Gunicorn's arbiter kills a worker once ``now - mtime > timeout`` (see
``heartbeat.py``); :func:`vouch` decides what that mtime must say, and
:class:`Vouching` is the only code that writes it while a section is open:
at section entry (the *standing vouch*, written ahead of time), at Gunicorn's
heartbeat (:meth:`Vouching.beat`), and at each look of the guard
(:meth:`Vouching.apply_rule`).
"""

from time import monotonic

from .regions import LOCK_WAIT


def vouch(now, standing, inside, loop_free, alive_at):
    """The vouching rule: what the heartbeat file must say, for the guard to write.

    Gunicorn's arbiter kills a worker once ``now - mtime > timeout`` (see
    ``heartbeat.py``).  heartworker writes that mtime only under this rule (at
    section entry and at Gunicorn's heartbeat, the serving thread writes the
    standing vouch, which is what the rule says while its code runs):

    * No section open (``standing is None``): Gunicorn's own heartbeat decides,
      as in stock Gunicorn.  Leaving the last section writes nothing (it costs
      a syscall on every request); a vouch still standing from it is withdrawn
      by the next Gunicorn heartbeat or by the guard's next look, back to
      ``alive_at``, the moment the section ended.  (So only a GIL-holding call
      that starts within one guard tick after a section is still covered, up
      to that section's deadline.)
    * The serving thread (in the threaded worker, while its main loop is
      silent, any request thread) is running code inside an open section
      (``inside``): the *standing vouch*, ``standing``.  It is the latest
      deadline of the open sections that could be running when no Python
      thread can run (the serving thread's innermost section in the sync
      worker; the latest one of all open greenlets' sections under gevent, or
      of all request threads' in the threaded worker), clipped by the graceful
      limit.  It was written ahead of time at section entry, so it holds
      even while C code keeps the GIL; it is never moved later by the guard.
      At the latest the arbiter kills at ``standing + timeout``.
    * No section code is running, but the serving loop answered the last
      probe (``loop_free``, gevent's hub is not blocked): ``max(now, standing)``
      - keep the standing vouch, so that a waiting section that next takes the
      GIL for longer than ``--timeout`` is covered without any thread's help.
    * Otherwise the serving thread is stuck outside every section: stock.  The
      file says ``alive_at``, the last moment the serving thread was seen
      alive (a Gunicorn heartbeat, a probe answered, or code seen inside a
      section), so the arbiter kills at ``alive_at + timeout`` as it would
      have without heartworker.

    Deadlines themselves (the caps) are not enforced here but by the guard,
    which aborts or cancels at the deadline; the standing vouch bounds the
    worker's life even if the guard cannot run.
    """
    if standing is None:
        return alive_at
    if inside:
        return standing
    if loop_free:
        return max(now, standing)
    return alive_at


class Vouching:
    """The standing vouch and the heartbeat writes (a part of the registry)."""

    def beat(self, notify):
        """Gunicorn's heartbeat: the serving loop is alive now.

        While a vouch stands, the file gets the later of now and the vouch, in
        one write, instead of Gunicorn's ``notify()``: that writes "now" first,
        and a request thread that takes the GIL during its ``utime`` for a long
        C call (the threaded worker) would be left with "now" for the whole call
        (found by benchmarks/soak.py).  ``GeventWorker.notify()`` also checks
        the parent; while a section is open, the guard does that.  In a region,
        so that the guard never writes in between.
        """
        with self.region() as held:
            if not held:
                # Re-entered from a signal handler, or (gevent) another greenlet of this
                # thread is frozen in a region: just Gunicorn's heartbeat.  The loop is
                # alive all the same: without this, a guard look that found the hub's probe
                # a little late wrote the stale ``alive_at`` over Gunicorn's fresh "now",
                # and the arbiter killed a worker whose loop had just notified (found when
                # the suite first ran in parallel).
                self.alive_at = monotonic()
                notify()
                return
            now = monotonic()
            self.apply_limit()
            self.alive_at = now
            if self.standing is None:
                notify()
                self.written = None   # Gunicorn's notify() just wrote "now"
            else:
                self._write(max(now, self.standing))

    def vouch_now(self, now):
        """Write "alive now": the threaded worker's graceful stop while it retires, which
        Gunicorn 23's wait does not notify (bounded by the guard: see ``Guard.retire``)."""
        with self.region(LOCK_WAIT) as held:
            if held and self.enabled:
                self.alive_at = now
                self._write(now if self.standing is None else max(now, self.standing))

    def set_limit(self, limit):
        """No deadline may pass ``limit`` (the graceful timeout).  Safe in a signal handler.

        The handler may interrupt a region of this very thread, so the limit is
        only recorded here; it takes effect at once if no region is busy, else
        at the next section entry, heartbeat, or guard step.
        """
        self.pending_limit = min(self.pending_limit, limit)
        with self.region(wait=0) as held:
            if held:
                self.apply_limit()
        self.ring()

    def disable(self, alive_at=None):
        """Stop vouching for good: back to Gunicorn's own heartbeat, alive at ``alive_at``
        (the last time the guard saw it so, if None)."""
        with self.region(LOCK_WAIT):      # with the lock or, after LOCK_WAIT, without
            self.enabled = False
            self.standing = None
            if self.written is not None:
                self._write(self.alive_at if alive_at is None else alive_at)
                self.written = None

    def aborting(self, alive_at):
        """The worker is being aborted: never vouch again, and say it was last alive at ``alive_at``.

        Safe in a signal handler (no lock: nothing is written after this).  The
        arbiter's SIGKILL then waits for ``alive_at`` + ``--timeout``: the
        abort's handler gets that long to answer its client and exit.
        """
        self.enabled = False
        self.standing = None
        self._write(alive_at)

    def apply_rule(self, now, inside, loop_seen, held=True):
        """Write what :func:`vouch` says, given what the guard just saw (call in a region).

        ``loop_seen`` is when the serving loop last answered a probe, if it
        answered the latest one (the loop is free), else None.
        """
        if not self.enabled:
            return                # disabled, or aborting: nothing more is written
        if held:
            self.apply_limit()
        if inside:
            self.alive_at = now
        elif loop_seen is not None:
            self.alive_at = max(self.alive_at, loop_seen)
        if self.standing is None and self.written is None:
            return                # Gunicorn's own heartbeat, untouched
        want = vouch(now, self.standing, inside, loop_seen is not None, self.alive_at)
        if want != self.written or self.standing is not None:
            # (written again at each look while a section is open: code that calls
            # Gunicorn's own ``worker.tmp.notify()`` overwrites the file behind our back)
            self._write(want)
        if self.standing is None:
            self.written = None   # withdrawn: back to Gunicorn's heartbeat

    def apply_limit(self):
        """Apply a limit recorded by :meth:`set_limit`.  Call in a region."""
        if self.pending_limit < self.limit:
            self.limit = self.pending_limit
            if self.standing is not None and self.standing > self.limit:
                self.standing = self.limit
                self._write(self.limit)

    def _stand(self, standing):
        """Make ``standing`` the standing vouch; write it unless what is written already works.

        Anything in ``[standing - window, standing]`` keeps the worker alive to
        the deadline and dead by deadline + window, so most entries need no syscall.
        """
        if standing > self.limit:
            standing = self.limit
        self.standing = standing
        written = self.written
        if written is None or not (standing - self.window <= written <= standing):
            self._write(standing)

    def _write(self, when):
        self.heartbeat.write(when)
        self.written = when
