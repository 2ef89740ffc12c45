"""``heartworker.SyncWorker``: Gunicorn's sync worker with long sections."""

from gunicorn.workers import sync

from .worker import HeartWorkerMixin


class SyncFlavor:
    """One serving thread, one stack of sections, one request at a time."""

    owner = None   # the serving thread owns every section

    def loop_seen(self, now):
        # The sync worker's loop proves itself alive through notify() only.
        return None

    def interrupt(self, guard, section, running):
        """Running or blocked in a syscall, the serving thread is interrupted where it is."""
        guard.signal_serving_thread()

    def request_context(self):
        """Where the current request's Gunicorn response is noted (see worker.py)."""
        return self

    def frame_of(self, section):
        return section.frame

    def waiting_frame(self, section):
        """One thread: a section that is not running on it is not running at all."""
        return None


class SyncWorker(HeartWorkerMixin, sync.SyncWorker):
    """``gunicorn -k heartworker.SyncWorker``."""

    def make_flavor(self):
        return SyncFlavor()
