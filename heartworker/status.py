"""The status service's answers: what the arbiter's workers are doing, as probes ask it.

It runs in the arbiter (``status_http.py`` serves it) and reads what each worker
publishes (``publish.py``: ``<pid>.status`` in the arbiter's shared directory)
and the count of startups in a row that failed (``aftermath.py``).  A worker is
one of the arbiter's live children; the file of a worker that is gone is
folded into the totals (its counters, whether it ever finished its startup)
and removed.

The checks, kube-apiserver style (``?verbose`` lists each as ``[+]``/``[-]``):

* ``/livez``: the arbiter answers; it fails once ``HEARTWORKER_LIVEZ_FAILED_STARTUPS``
  startups in a row ended past their cap or stall limit (restarting will not help
  an app that cannot start: the pod should be replaced, and someone told).
* ``/readyz``: some worker has finished its startup and serves.
* ``/startupz``: some worker has finished its startup since the arbiter started.
"""

import json
import os
import threading
from time import monotonic, time

from .publish import COUNTERS, MARK, PHASES

STARTUPS_FILE = "startups-past-cap"     # (aftermath.py keeps it)


def children_of(pid):
    """The live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[1]) == pid:
            found.add(int(name))
    return found


class Status:
    """What the arbiter's workers are doing, read on each request to the service."""

    def __init__(self, directory, failed_limit, failed_name, worker_pids=None):
        self.directory = directory
        # the arbiter's workers (its WORKERS), else its live children
        self.worker_pids = worker_pids or (lambda: children_of(self.pid))
        self.failed_limit = failed_limit     # HEARTWORKER_LIVEZ_FAILED_STARTUPS
        self.failed_name = failed_name       # how the body names it
        self.pid = os.getpid()
        self.started = monotonic()
        self.started_wall = time()
        self.lock = threading.Lock()         # (requests are served on threads)
        self.gone = dict.fromkeys(COUNTERS, 0)   # the counters of workers that are gone
        self.startup_completed = False       # since the arbiter started (sticky)

    def mark(self):
        """Tell the workers to publish (publish.serves_status)."""
        try:
            with open(os.path.join(self.directory, MARK), "w"):
                pass
        except OSError:
            pass

    # -- reading --------------------------------------------------------------------
    def snapshot(self):
        """({pid: state} of the live workers, the counters' totals), read together: the
        files of workers that are gone are folded into the totals meanwhile."""
        live = set(self.worker_pids())
        states = {}
        with self.lock:
            for name in self._names():
                pid = int(name.partition(".")[0])
                if name.endswith(".new"):          # a write its worker did not finish
                    if pid not in live:
                        self._unlink(name)
                    continue
                state = self._read(name)
                if pid in live:
                    if state is not None:
                        states[pid] = state
                    continue
                if state is not None:           # gone: fold it into the totals
                    for key in COUNTERS:
                        self.gone[key] += _count(state, key)
                    if state.get("startup_took") is not None:
                        self.startup_completed = True
                self._unlink(name)
            totals = dict(self.gone)
            for state in states.values():
                if state.get("startup_took") is not None:
                    self.startup_completed = True
                for key in COUNTERS:
                    totals[key] += _count(state, key)
        for pid in live - set(states):
            states[pid] = {"pid": pid, "phase": "starting", "startup": None, "sections": [],
                           "in_flight": 0, "counts": {}, "startup_took": None}
        return dict(sorted(states.items())), totals

    def _names(self):
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [n for n in names if n.endswith((".status", ".status.new"))
                and n.partition(".")[0].isdigit()]

    def _unlink(self, name):
        try:
            os.unlink(os.path.join(self.directory, name))
        except OSError:
            pass

    def _read(self, name):
        """A worker's state, its times brought forward to now (it was written up to a
        second ago: elapsed times grow, time left shrinks meanwhile)."""
        try:
            with open(os.path.join(self.directory, name)) as f:
                state = json.load(f)
            age = max(0.0, time() - float(state["written"]))
            for section in [state["startup"], *state["sections"]]:
                if section:
                    section["elapsed"] = round(section["elapsed"] + age, 3)
                    section["left"] = round(max(0.0, section["left"] - age), 3)
                    if section.get("note_age") is not None:
                        section["note_age"] = round(section["note_age"] + age, 3)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return state

    def failed_startups(self):
        try:
            with open(os.path.join(self.directory, STARTUPS_FILE)) as f:
                return int(float(f.read()))
        except (OSError, ValueError):
            return 0

    # -- the checks ---------------------------------------------------------------------
    def checks(self, which, workers):
        """[(name, ok, why)] of the endpoint ``which`` (livez, readyz, startupz), given the
        snapshot's ``workers``."""
        if which == "livez":
            failed = self.failed_startups()
            return [("ping", True, ""),
                    ("startups", failed < self.failed_limit,
                     f"{failed} startups in a row ended past their cap or stall limit "
                     f"({self.failed_name}={self.failed_limit})")]
        serving = [s for s in workers.values() if s.get("phase") == "serving"]
        if which == "readyz":
            stopping = sum(s.get("phase") in ("stopping", "retiring") for s in workers.values())
            if stopping:
                why = f"no worker serves ({stopping} stopping)"
            elif self.startup_completed:
                why = "no worker serves"
            else:
                why = "no worker has finished its startup"
            return [("workers", bool(serving), why + loading(workers))]
        return [("startup", self.startup_completed,
                 "no worker has finished its startup yet" + loading(workers))]

    def status(self, workers, totals):
        """The /status JSON's object."""
        return {
            "arbiter": {"pid": self.pid, "uptime": round(monotonic() - self.started, 3),
                        "started": self.started_wall},
            "startup_completed": self.startup_completed,
            "failed_startups_in_a_row": self.failed_startups(),
            "workers": [{key: state.get(key) for key in (
                "pid", "phase", "startup", "startup_took", "sections", "in_flight", "counts")}
                for state in workers.values()],
            "counts": totals,
        }

    def metrics(self, workers, totals):
        """The Prometheus text exposition (through prometheus_client)."""
        from prometheus_client import CollectorRegistry, generate_latest
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, workers, totals))
        return generate_latest(registry)


def _count(state, key):
    try:
        return int(state.get("counts", {}).get(key, 0))
    except (TypeError, ValueError, AttributeError):
        return 0


def loading(workers):
    """What the starting workers are doing, for a 503's body: ``: worker 12: 35.2 s, ...``."""
    parts = []
    for pid, state in workers.items():
        startup = state.get("startup")
        if state.get("phase") != "starting":
            continue
        if not startup:
            parts.append(f"worker {pid}: starting")
            continue
        note = "" if startup.get("note") is None else (
            f", last progress {startup['note']!r} {startup['note_age']:.1f} s ago")
        parts.append(f"worker {pid}: starting for {startup['elapsed']:.1f} s of its cap "
                     f"{startup['cap']:g} s{note}")
    return (": " + "; ".join(parts)) if parts else ""


class _Collector:
    """prometheus_client's view of one snapshot (a collector made per scrape)."""

    def __init__(self, status, workers, totals):
        self.status, self.workers, self.totals = status, workers, totals

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        workers = self.workers
        for key, value in self.totals.items():
            yield CounterMetricFamily(f"heartworker_{key}", f"heartworker.{key} events, all "
                                      f"the arbiter's workers (as in statsd)", value=value)
        phases = GaugeMetricFamily("heartworker_workers", "Workers by phase", labels=["phase"])
        for phase in PHASES:
            phases.add_metric([phase], sum(s.get("phase") == phase for s in workers.values()))
        yield phases
        startup = GaugeMetricFamily("heartworker_startup_seconds", "A worker's startup: how "
                                    "long it took, or how long it has run", labels=["pid"])
        opened = GaugeMetricFamily("heartworker_sections_open", "Open sections (the startup "
                                   "not counted)", labels=["pid"])
        oldest = GaugeMetricFamily("heartworker_oldest_section_seconds", "Age of the oldest "
                                   "open section (0: none)", labels=["pid"])
        flight = GaugeMetricFamily("heartworker_requests_in_flight", "Requests being served",
                                   labels=["pid"])
        for pid, state in workers.items():
            label = [str(pid)]
            took = state.get("startup_took")
            if took is None and state.get("startup"):
                took = state["startup"].get("elapsed")
            if took is not None:
                startup.add_metric(label, float(took))
            sections = state.get("sections") or []
            opened.add_metric(label, len(sections))
            oldest.add_metric(label, max((float(s.get("elapsed", 0)) for s in sections),
                                         default=0.0))
            flight.add_metric(label, int(state.get("in_flight") or 0))
        yield from (startup, opened, oldest, flight)
        yield GaugeMetricFamily("heartworker_failed_startups_in_a_row", "Startups in a row "
                                "that ended past their cap or stall limit",
                                value=self.status.failed_startups())
