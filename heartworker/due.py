"""What the guard does at a deadline: find the sections past it, end the one still running.

A part of :class:`~heartworker.guard.Guard` (its state is the guard's).  At each
look the guard takes the sections whose deadline passed off the heap
(:meth:`Due.take_due`), finds for each the innermost one whose code still runs
(:meth:`Due.live_one`: one left open in a suspended generator is dropped, never
cancelled), and cancels it (:meth:`Due.act_on_due`, by ``endings.py``).  While a
cancelled section runs on, it is interrupted again every ``RESEND`` seconds
(:meth:`Due.resend`); past its grace it is escalated
(:meth:`Due.escalate_overdue`: the worker is retired or aborted).
"""

from .deadline import Request

RESEND = 0.02      # seconds between cancellation signals while a cancelled section runs on
SENDING_LOOK = 0.25   # seconds between looks at a request past its limit while Gunicorn sends


class Due:
    """The sections past their deadline, cancelled and escalated (a part of the guard)."""

    def take_due(self, now, held):
        """[(section, its owner's innermost section)] for each section past its deadline.

        In a region they leave the deadline heap (they are being dealt with).
        """
        reg = self.registry
        due = []
        earliest = reg.earliest(held)
        while earliest is not None and reg.deadline_of(earliest) <= now:
            if not held:          # only read: the heap keeps it (acted on once: see earliest)
                due.append((earliest, reg.innermost(earliest)))
                break
            due.append((earliest, reg.innermost(earliest)))
            reg.pop_earliest()
            earliest = reg.earliest()
        return due

    def live_one(self, frame, innermost, section, now):
        """The section to end at this deadline: the innermost one whose code still runs.

        A section whose code runs nowhere (neither on the serving stack nor in
        a waiting greenlet) was left open by its owner: a generator suspended
        inside it and abandoned, an exception between entering and the
        ``with``.  Nothing is stuck in it, so nothing is aborted or cancelled
        for it: it is dropped with a warning, and no longer clips or vouches.
        """
        reg = self.registry
        for candidate in (innermost, section) if innermost is not section else (section,):
            if reg.inside_section(frame, candidate) or \
                    reg.inside_section(self.flavor.waiting_frame(candidate), candidate):
                return candidate
            if isinstance(candidate, Request) or candidate.closed:
                return None       # it ended while the guard looked: nothing to do
            self.log.warning("heartworker: section %s passed its deadline (%.2f s elapsed, cap "
                             "%g s) but its code is not running (left open in a suspended "
                             "generator, or never closed); it no longer counts",
                             candidate.describe(), now - candidate.started, candidate.cap)
            if not reg.drop(candidate, self.lock_wait()):
                candidate.why = "left open; it no longer counts"   # (acted on once)
        return None

    def act_on_due(self, due, frame, now):
        """Cancel (or abort for) each section past its deadline: (aborted, cancelled any)."""
        reg, cancelled = self.registry, False
        for section, innermost in due:
            target = self.live_one(frame, innermost, section, now)
            if target is None:
                continue
            if self.flavor.retires and any(s.owner == target.owner for _, s in self.overdue):
                target.why = section.why = "its thread was cancelled already"
                continue          # one exception per thread: the grace decides (retire)
            if isinstance(target, Request) and self.flavor.sending(target):
                if not target.sending_noted:
                    target.sending_noted = True
                    self.log.warning("heartworker: %s is past %s (%.2f s elapsed) while "
                                     "Gunicorn sends its response to the client; the send is "
                                     "not cut short (as in stock Gunicorn), the app's code "
                                     "after it is", target.label(), self.request_limit_name,
                                     now - target.started)
                target.deadline = now + SENDING_LOOK     # (looked at again: not exempt)
                continue
            running = reg.inside_section(frame, target)
            where = frame if running else self.flavor.frame_of(target)
            message = self.deadline_message(target, section, now)
            if reg.stalled(section):
                self.count("heartworker.stall")
            if not target.cancel:
                if self.escalate(message + " (the section has cancel=False)", where, target):
                    return True, cancelled
                continue
            if self.startup is not None and not self.startup.closed:
                # No request to end yet, and Gunicorn's boot code above the app's would
                # not expect an exception: during startup a deadline aborts, as it did.
                self.abort(message, where, target)
                return True, cancelled
            for ended in (target, section) if target is not section else (target,):
                ended.why = message.replace("heartworker: ", "", 1)
                self.overdue.append((now + self.grace, ended))   # `grace` to end
            self.cancel(target, message + self.fix_for(target), where, running)
            cancelled = True
        return False, cancelled

    def resend(self, frame):
        """Interrupt again each cancelled section still running; return whether any is."""
        undelivered = False
        for _, section in self.overdue:
            if section.why is not None and not section.delivered and not section.closed:
                undelivered = True     # still running: signal again (see take_cancellation)
                self.flavor.interrupt(self, section,
                                      self.registry.inside_section(frame, section))
        return undelivered

    def escalate_overdue(self, frame, now):
        """Escalate each cancelled section still running past its grace; True if aborted.

        The grace counts from the send, or from the delivery.  Under gevent the hub
        delivers a waiting greenlet's exception while the guard looks: ``delivered``
        is read again once the flavour has said yes (the hub runs its callbacks in
        order, so a throw the flavour's answer relied on has set it by then).  Read
        only before, a throw landing in between got the worker aborted the moment
        its exception was delivered (found when the suite first ran in parallel).
        """
        for escalate_at, section in self.overdue:
            if section.closed or escalate_at > now or self.in_grace(section, now):
                continue
            running = self.registry.inside_section(frame, section)
            if self.flavor.escalates(section, running) and not self.in_grace(section, now):
                if self.escalate(self.overdue_message(section, escalate_at - self.grace, now),
                                 frame if running else self.flavor.frame_of(section), section):
                    return True
        return False

    def in_grace(self, section, now):
        """Was its cancellation delivered less than the grace ago?"""
        delivered = section.delivered
        return bool(delivered) and delivered + self.grace > now
