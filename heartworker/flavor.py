"""The sync worker's flavour: one serving thread owns every section.

It is also every worker's flavour from the fork until its own is installed
(see ``worker.py``): during ``post_fork`` nothing else serves yet.
"""

import sys

from .origins import writing_response


class SyncFlavor:
    """One serving thread, one stack of sections, one request at a time."""

    owner = None   # the serving thread owns every section
    retires = False   # the backstop aborts the worker

    @staticmethod
    def escalates(section, running):
        """A cancelled section still running after the grace gets the worker aborted."""
        return True

    def loop_seen(self, now):
        # The sync worker's loop proves itself alive through notify() only.
        return None

    @staticmethod
    def running_inside(registry, frame, loop_seen):
        """Is the serving thread (its current ``frame``) running code inside an open section?"""
        return registry.inside(frame)

    @staticmethod
    def stock_would_kill(guard, section, now):
        """A section past --timeout: stock's sync worker notifies between requests only."""
        return True

    @staticmethod
    def sending(request):
        """Is the serving thread in Gunicorn's own code (writing the response)?"""
        return writing_response(sys._current_frames().get(request.registry.tid))

    def interrupt(self, guard, section, running):
        """Running or blocked in a syscall, the serving thread is interrupted where it is."""
        guard.signal_serving_thread()

    def request_context(self):
        """Where the current request's Gunicorn response is noted (see worker.py)."""
        return self

    def frame_of(self, section):
        return section.frame

    @staticmethod
    def frames_at_abort():
        """Where sections' code runs when the arbiter's abort comes: None, the signal's frame."""
        return None

    def waiting_frame(self, section):
        """One thread: a section that is not running on it is not running at all."""
        return None
