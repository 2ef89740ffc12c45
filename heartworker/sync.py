"""``heartworker.SyncWorker``: Gunicorn's sync worker with long sections."""

from gunicorn.workers import sync

from .worker import HeartWorkerMixin


class SyncFlavor:
    """One serving thread, one stack of sections; a deadline aborts the worker."""

    owner = None   # the serving thread owns every section

    def loop_seen(self, now):
        # The sync worker's loop proves itself alive through notify() only.
        return None

    def on_deadline(self, guard, section, running, now):
        guard.abort(guard.deadline_message(section, now), guard.current_frame())
        return "abort"

    def frame_of(self, section):
        return section.frame

    def waiting_frame(self, section):
        """One thread: a section that is not running on it is not running at all."""
        return None


class SyncWorker(HeartWorkerMixin, sync.SyncWorker):
    """``gunicorn -k heartworker.SyncWorker``."""

    def make_flavor(self):
        return SyncFlavor()
