"""``heartworker.SyncWorker``: Gunicorn's sync worker with long sections."""

from gunicorn.workers import sync

from .flavor import SyncFlavor
from .worker import HeartWorkerMixin


class SyncWorker(HeartWorkerMixin, sync.SyncWorker):
    """``gunicorn -k heartworker.SyncWorker``."""

    def make_flavor(self):
        return SyncFlavor()
