"""What a worker tells the arbiter's status service (``status.py``): a small JSON file.

The guard thread writes it, never the serving code: at the guard's looks, at most
every ``EVERY`` seconds (the guard looks at least every second), and at once
when the worker's phase changes or a counted event happens (a cancellation, an
abort...).  So a request costs the status service nothing but two steps of a
counter (requests in flight: the threaded worker counts its requests already), and
no syscall.  The file is ``<pid>.status`` in the
arbiter's shared directory (``aftermath.shared_dir``), replaced whole
(``os.replace``): a reader never sees half of one.
"""

import json
import os
from time import time

from .report import shown

EVERY = 1.0
MARK = "status-service"   # in the shared directory while the arbiter serves the status
PHASES = ("starting", "serving", "stopping", "retiring")
COUNTERS = ("cancel", "abort", "stall", "saved", "retire")


def serves_status(directory):
    """Does this worker's arbiter serve the status service (then the worker publishes)?"""
    return os.path.exists(os.path.join(directory, MARK))


class Publisher:
    """One worker's status file, written by its guard."""

    def __init__(self, directory, worker):
        self.path = os.path.join(directory, f"{os.getpid()}.status")
        self.worker = worker            # phase(), in_flight(), startup_took
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.next_at = 0.0              # publish at the guard's first look
        self.failed = False

    def count(self, event):
        """Count ``heartworker.<event>``; published at the guard's next look."""
        if event in self.counts:
            self.counts[event] += 1
            self.next_at = 0.0

    def changed(self):
        """The phase changed (call from any thread, then ring the guard)."""
        self.next_at = 0.0

    def due(self, now):
        return now >= self.next_at

    def write(self, state, now):
        """Write ``state`` (:meth:`state`, taken in a region; written outside it)."""
        self.next_at = now + EVERY
        try:
            tmp = f"{self.path}.new"
            with open(tmp, "w") as f:
                json.dump(state, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except (OSError, TypeError, ValueError) as exc:
            if not self.failed:
                self.failed = True
                self.worker.log.warning("heartworker: cannot publish the worker's status "
                                        "(%s): the status service will not see it", exc)

    def state(self, registry, now, held):
        """What the worker is doing (call in a region: it reads the open sections)."""
        worker = self.worker
        startup = worker.startup
        sections = []
        if held:
            for stack in list(registry.stacks.values()):
                for section in stack:
                    if section is startup or section.closed:
                        continue
                    sections.append(describe(section, registry, now))
        return {
            "pid": os.getpid(),
            "phase": worker.phase(),
            "written": time(),
            "startup": None if startup is None else describe(startup, registry, now),
            "startup_took": worker.startup_took,
            "sections": sections,
            "in_flight": worker.in_flight(),
            "counts": dict(self.counts),
        }

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


def describe(section, registry, now):
    """One open section as the status service shows it."""
    note, progress_at = section.note, section.progress_at
    return {
        "name": section.label(),
        "elapsed": round(now - section.started, 3),
        "cap": section.cap,
        "left": round(max(0.0, section.due(registry.limit) - now), 3),
        "note": None if note is None or progress_at <= section.started else shown(note),
        "note_age": None if progress_at <= section.started else round(now - progress_at, 3),
        "cancelled": section.why is not None,
    }

