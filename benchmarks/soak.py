"""Soak: mixed traffic and faults against each heartworker worker; nothing lost, nothing leaked.

    python benchmarks/soak.py [--minutes 10] [--quick]

For each worker class (sync, gevent, threaded), a real Gunicorn with several
workers on 127.0.0.1 gets requests from a few concurrent clients, drawn from a
shuffled deck of kinds (``benchmarks/soak_rules.py``: fast ones, long work in
sections within their caps, CPU-bound and GIL-holding sections, sections past
their caps, stalled ones, hangs outside sections), while faults arrive on a
schedule: ``HUP`` reloads, ``TTIN``/``TTOU``, a worker ``SIGKILL``ed, a worker
``SIGTERM``ed while it runs a section.  Beside the deck, the *load*: more
clients that send fast requests back to back (at least ``MIN_LOAD`` a minute:
10,000 in a ``--quick`` run, 100,000 in ten minutes), each judged as the deck's:
a fast request that fails is unexpected unless a worker's explained death ended
it.

Every answer is checked against what docs/semantics.md promises for its kind (see
``soak_rules``), and every worker that died must have died, in time and in the
right way, of a fault the soak sent or of a request whose documented end is its
worker's.  Beside it, a *sentinel* server of the same class (one worker, one
client, no faults, only requests its worker survives) runs for the whole
phase: its worker is the long-lived process that a leak per request shows in.
Every worker and arbiter is sampled for RSS, open fds and threads.  After a
graceful stop, no process of either server may be left.  The run fails (exit 1)
on any unexpected outcome, unexplained death, leak, leftover process, or a
kind or fault that never happened; its last line is the summary.
"""

import collections
import itertools
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import requests

import common
import soak_rules as rules

# (label, worker class, workers): one sync worker serves one request at a time, and the
# deck's clients keep about four slow ones in flight: the load needs workers of its own.
FLAVORS = [("sync", "heartworker.SyncWorker", 6),
           ("gevent", "heartworker.GeventWorker", 3),
           ("gthread", "heartworker.ThreadWorker", 3)]
CLIENTS = 4
# The load: clients that send only fast requests, back to back, beside the deck's (issue 25).
LOAD_CLIENTS = 6
MIN_LOAD = 10_000             # fast requests the load must send per minute of the run
BUSY_MACHINE = 0.05           # the share of the run the machine ran nothing (Starvation)
#                               beyond which MIN_LOAD says nothing (alone: 0.001-0.002)
FAULTS = ["HUP", "TTIN", "KILL", "TTOU", "TERM"]
RSS_GROWTH_LIMIT_MIB = 32     # per process over its sampled life
RSS_BAND_MIB = 8              # the last third's median RSS above the first third's
MIN_SLOPE_SECONDS = 60        # growth per hour only from processes sampled this long
WARM_UP_SECONDS = 20          # ... after their first samples (imports, caches, allocator)
# A long-lived process with no swing to speak of (an arbiter, the sentinel's worker) leaks
# if its growth per hour passes these (the 10-minute runs measure at most 5 MiB/h and no
# fd or thread growth; one fd leaked a minute is 60/h).
SLOPE_LIMITS = {"RSS MiB": 32, "open fds": 24, "threads": 24}
SLOPE_RISE = {"RSS MiB": 4, "open fds": 2, "threads": 2}   # ... and its thirds rose this much
WATCH_EVERY = 0.1             # how often the soak looks for workers that died
SEEN_GONE_WITHIN = 1.0        # a death is dated at most this long before it was seen
SEED = 1234


@dataclass
class Result:
    kind: str
    rid: str
    start: float
    end: float = 0.0
    outcome: str = ""       # "200", "504", ..., "closed", "truncated", "timeout", "error: ..."
    body: str = ""
    verdict: str = ""       # "expected", "collateral", or why it is unexpected
    expect: rules.Expect = None   # the rule it met
    began: float = 0.0            # when its worker began it (the journal's), else ``start``
    blocked: float = 0.0          # seconds it was stopped: by neighbours (gevent, gthread), or
    #                               a GIL hold's C call by a busy machine (see blocked_for)
    owed: str = ""                # its rule ends its worker, which did not end that way


@dataclass
class Fault:
    at: float
    name: str
    target: int = None      # the worker it is aimed at (KILL, TERM)
    workers: tuple = ()     # the workers alive when it was sent
    in_section: bool = False   # TERM: its target was running a section
    oldest: tuple = ()      # TTOU: the workers that may be Gunicorn's oldest (born in one look)


@dataclass
class Phase:
    flavor: str
    results: list = field(default_factory=list)
    faults: list = field(default_factory=list)
    samples: dict = field(default_factory=lambda: collections.defaultdict(list))
    inflight: dict = field(default_factory=dict)     # rid -> kind
    helpers: list = field(default_factory=list)      # threads of the faults' own requests
    booted: list = field(default_factory=list)
    alive_at_end: set = field(default_factory=set)
    sentinel: set = field(default_factory=set)       # the sentinel server's workers
    born: dict = field(default_factory=dict)         # pid -> when first seen alive
    died: dict = field(default_factory=dict)         # pid -> when first seen gone
    last_alive: dict = field(default_factory=dict)   # pid -> when last seen alive (it died
    #                                                  between then and ``died``)
    deaths: dict = field(default_factory=dict)       # pid -> [(at, why)]
    how: dict = field(default_factory=dict)          # pid -> how it ended (``how_it_ended``)
    stopping: dict = field(default_factory=dict)     # pid -> when a graceful stop of it
                                                     # began (a fault, a retirement), whatever
                                                     # ended it
    held_gil: dict = field(default_factory=dict)     # pid -> seconds C code held the GIL in
                                                     # it between its stop and its death
    unexpected: list = field(default_factory=list)   # (what went wrong, worker pid or None)
    log: str = ""
    started: float = 0.0
    leftovers: int = 0
    leaks: list = field(default_factory=list)
    seconds: float = 0.0
    by_worker: dict = None     # pid -> its requests of the rarer kinds (see ran_during)
    starvation: object = None  # the machine's stops (Starvation)
    own_stalls: object = None  # the soak process's own (OwnStalls)


# -- processes -------------------------------------------------------------------------
def proc_stat(pid):
    """(ppid, session id) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):   # a zombie, or being reaped
        return None
    return int(fields[1]), int(fields[3])


def processes_where(test):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and test(*stat):
                found.append(int(name))
    return found


def children(pid):
    return processes_where(lambda ppid, sid: ppid == pid)


def in_session(sid):
    return processes_where(lambda ppid, session: session == sid)


def usage(pid):
    """(RSS KiB, open fds, threads) of ``pid``, or None if it is gone."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        return int(status["VmRSS"].split()[0]), fds, int(status["Threads"])
    except (OSError, KeyError, ValueError):
        return None


# -- the load -----------------------------------------------------------------------------
def deck(weights, rng):
    """Kinds (``{kind: weight}``) in a shuffled order, each as often as its weight, forever."""
    cards = [kind for kind, weight in weights.items() for _ in range(weight)]
    while True:
        rng.shuffle(cards)
        yield from cards


def send(srv, kind, rid):
    try:
        r = requests.get(srv.url(rules.path(kind)), timeout=(5, rules.CLIENT_TIMEOUT),
                         headers={"X-Soak-Id": rid, "Connection": "close"})
        return str(r.status_code), r.text
    except requests.ReadTimeout:
        return "timeout", ""
    except requests.ConnectionError:
        return "closed", ""
    except requests.exceptions.ChunkedEncodingError:
        return "truncated", ""                   # closed in the middle of the body
    except requests.RequestException as exc:
        return f"error: {type(exc).__name__}", str(exc)


def client(srv, phase, cards, lock, until, number):
    """Send requests drawn from ``cards`` one after another until ``until``."""
    for n in itertools.count():
        if time.monotonic() >= until:
            return
        with lock:
            kind = next(cards)
        one_request(srv, phase, kind, f"{phase.flavor}-{number}-{n}")


def load_client(srv, phase, until, number):
    """The load: fast requests, one after another until ``until`` (judged like the others)."""
    for n in itertools.count():
        if time.monotonic() >= until:
            return
        one_request(srv, phase, "fast", f"{phase.flavor}-load{number}-{n}")


def is_load(result):
    return "-load" in result.rid


def one_request(srv, phase, kind, rid):
    result = Result(kind, rid, time.monotonic())
    phase.inflight[rid] = kind
    result.outcome, result.body = send(srv, kind, rid)
    result.end = time.monotonic()
    del phase.inflight[rid]
    phase.results.append(result)


def journal_lines(path):
    try:
        with open(path) as f:
            return [line.split() for line in f]
    except FileNotFoundError:
        return []


def journal(path):
    """{request id: (the pid of the worker that ran it, when it began there)} (from soak_app)."""
    return {rid: (int(pid), float(began)) for rid, pid, began, *held in journal_lines(path)
            if not held}


def returned_calls(path):
    """The requests whose GIL-holding call returned (soak_app journals ``<rid>/returned``)."""
    return {rid[:-len("/returned")] for rid, *_ in journal_lines(path)
            if rid.endswith("/returned")}


def gil_holds(path):
    """{request id: seconds its C call held the GIL} (from soak_app: a hold that ended)."""
    return {rid: float(held[0]) for rid, _, _, *held in journal_lines(path) if held}


# -- the machine ------------------------------------------------------------------------------
class Starvation:
    """When, and for how long, the machine kept its processes from running.

    A process of its own (no other thread shares its GIL) sleeps ``TICK`` over and
    over and writes down every wake that came more than ``LATE`` late: the CPUs
    were taken.  A request that ran meanwhile was stopped that long too (its
    worker, its client, the guard that ends it): ``during`` counts it as such.
    """

    TICK, LATE = 0.005, 0.02
    CODE = ("import sys, time\n"
            "while True:\n"
            "    t = time.monotonic(); time.sleep(%r); woke = time.monotonic()\n"
            "    if woke - t - %r > %r: print(woke, woke - t - %r, flush=True)\n")

    def __init__(self):
        code = self.CODE % (self.TICK, self.TICK, self.LATE, self.TICK)
        self.out = tempfile.TemporaryFile(mode="w+")    # (a pipe would fill, and stop it)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self.out, text=True)
        self.late = []

    def stop(self):
        """Stop the probe; keep what it saw: [(woke, seconds late)]."""
        self.proc.kill()
        self.proc.wait(10)
        self.out.seek(0)
        self.late = [tuple(map(float, line.split())) for line in self.out.read().splitlines()]
        self.out.close()

    def total(self):
        return sum(late for _, late in self.late)

    def during(self, since, until):
        """Seconds the machine stopped its processes between ``since`` and ``until``."""
        return sum(min(woke, until) - max(woke - late, since) for woke, late in self.late
                   if woke > since and woke - late < until)


class OwnStalls(Starvation):
    """When the soak's own threads could not run: its clients learn every answer and
    every close that much late.

    A thread of this process sleeps ``TICK`` over and over, as ``Starvation``'s
    process does, and writes down every wake more than ``LATE`` late.  Beside the
    machine's stops it sees the soak's GIL, which its client threads share: on a
    crowded machine a client saw a connection its worker's death closed, over a
    second after that death, because its own process was not given the CPU
    (beside the test suite's parallel group).  The judge allows for these stops
    where it times what a client saw against what a worker did.
    """

    def __init__(self):
        self.late, self.stopped = [], threading.Event()
        self.thread = threading.Thread(target=self.probe, daemon=True)
        self.thread.start()

    def probe(self):
        while not self.stopped.is_set():
            t = time.monotonic()
            time.sleep(self.TICK)
            woke = time.monotonic()
            if woke - t - self.TICK > self.LATE:
                self.late.append((woke, woke - t - self.TICK))

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


# -- faults and samples ----------------------------------------------------------------------
def inject(srv, phase, name, rng, journal_path):
    master = srv.proc.pid
    workers = tuple(sorted(children(master)))
    target, in_section = None, False
    sent = time.monotonic()         # (before the signal: a death is never seen before it)
    oldest = ()
    if name in ("HUP", "TTIN", "TTOU"):
        if name == "TTOU" and workers:          # Gunicorn stops its oldest worker: workers
            first = min(phase.born.get(p, sent) for p in workers)   # spawned together log
            oldest = tuple(p for p in workers    # their boots in any order
                           if phase.born.get(p, sent) <= first + WATCH_EVERY)
        try:
            os.kill(master, getattr(signal, "SIG" + name))
        except ProcessLookupError:
            common.fail(f"{phase.flavor}: the arbiter is gone (SIG{name} found no process)")
    elif workers:
        busy = []
        for attempt in range(TERM_TRIES if name == "TERM" else 1):
            if name == "TERM":    # (another look, and maybe another request of its own)
                busy = in_sections(srv, phase, journal_path)
                workers = tuple(sorted(set(children(master)) | set(busy))) or workers  # (now)
                if not busy and attempt < TERM_TRIES - 1:
                    continue
            target = rng.choice(busy or list(workers))
            sent = time.monotonic()
            try:
                os.kill(target, getattr(signal, "SIG" + name))
                in_section = target in busy
                break
            except ProcessLookupError:
                target = None   # gone already (retired meanwhile): aim again
    phase.faults.append(Fault(sent, name, target, workers, in_section, oldest))


# How many times the TERM fault looks for a worker in a section (each look may send a
# request of its own) before it settles for any worker: on a crowded machine (CI, load
# 7 on 2 cores) one look of some 7 s once found none, or one that had retired meanwhile.
TERM_TRIES = 3


def in_sections(srv, phase, journal_path, wait=2.0):
    """Workers running a section within its cap now.

    Waits up to ``wait`` s for the clients to start one, then sends one itself (a
    ``long`` request, judged like the clients') and waits for it, so that every
    run, however short, stops a worker in the middle of a section at least once
    (the workers there may be retiring: it may be served by one just booted).
    """
    busy = running_sections(srv, phase, journal_path, wait)
    if not busy:
        helper = threading.Thread(target=one_request, daemon=True, args=(
            srv, phase, "long", f"{phase.flavor}-term-{len(phase.faults)}-{len(phase.helpers)}"))
        helper.start()
        phase.helpers.append(helper)
        busy = running_sections(srv, phase, journal_path, 2 * wait + rules.LONG / 2)
    return busy


def running_sections(srv, phase, journal_path, wait):
    """The live workers running a section within its cap, once one does (or after ``wait`` s)."""
    until = time.monotonic() + wait
    while True:
        running = journal(journal_path)
        busy = [running.get(rid, (None,))[0] for rid, kind in list(phase.inflight.items())
                if kind in ("long", "cpu", "gil")]
        alive = children(srv.proc.pid)
        busy = [p for p in busy if p in alive]
        if busy or time.monotonic() > until:
            return busy
        time.sleep(0.05)


def phase_booted(srv):
    return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", srv.log())]


def faults(srv, phase, until, every, rng, journal_path):
    """A fault every ``every`` seconds from the phase's start, on a fixed schedule: a slow
    injection (the load makes looking at /proc slow) does not push the next ones back,
    so that a short run still sends every fault once."""
    for n, name in enumerate(itertools.cycle(FAULTS), start=1):
        wake = phase.started + n * every
        if wake >= until:
            break
        time.sleep(max(0.0, wake - time.monotonic()))
        inject(srv, phase, name, rng, journal_path)
    for helper in phase.helpers:      # the faults' own requests are judged too
        helper.join(rules.CLIENT_TIMEOUT + 10)
        if helper.is_alive():
            common.fail(f"{phase.flavor}: the TERM fault's own request did not finish")


def watch(servers, phase, stop, sample_every):
    """Note when each worker is first seen and first seen gone; sample every process."""
    next_sample = time.monotonic()
    while not stop.wait(WATCH_EVERY):
        now = time.monotonic()
        for srv in servers:
            master = srv.proc.pid
            workers = children(master)
            for pid in workers:
                phase.born.setdefault(pid, now)
            if now < next_sample:
                continue
            for pid in [master] + workers:
                seen = usage(pid)
                if seen is not None:
                    rss, fds, threads = seen
                    if pid == master:   # the arbiter holds one heartbeat file per worker
                        fds -= len(workers)
                    phase.samples[pid].append((now, rss, fds, threads))
        looked = time.monotonic()
        alive = {pid for srv in servers for pid in children(srv.proc.pid)}
        for pid in alive:
            phase.last_alive[pid] = looked
        seen_gone = time.monotonic()    # (after the look: a death is never dated before it)
        for pid in phase.born.keys() - alive - phase.died.keys():
            phase.died[pid] = seen_gone
        if now >= next_sample:
            next_sample = now + sample_every


# -- verdicts ------------------------------------------------------------------------------------
def how_it_ended(log, pid):
    """How the arbiter's log says worker ``pid`` ended.

    * "graceful": it exited by itself with code 0 (or of SIGTERM), or it is a
      threaded worker that retired at the end of its graceful stop with
      request threads it could not end (code 1, and heartworker says so);
    * "aborted": the arbiter's ``WORKER TIMEOUT`` (its SIGABRT), then an exit
      (code 0 when the abort ended a request, as in stock, else 1), or death by
      that SIGABRT itself (a worker already exiting runs no Python handler), or
      by the SIGTERM of a stop (a HUP) that came while the abort's exit was
      under way (Python puts the default handlers back as it finalizes);
    * "aborted, then SIGKILL": the arbiter's SIGKILL at a later look;
    * "SIGKILL" with no ``WORKER TIMEOUT`` (the soak's fault), "code 1" (an
      abort of heartworker's guard), or any other signal or exit code.
    """
    m = re.search(rf"Worker \(pid:{pid}\) (?:was sent (\w+)|exited with code (\d+))", log)
    signal_name = m and m.group(1)
    if f"WORKER TIMEOUT (pid:{pid})" in log and signal_name in (None, "SIGKILL", "SIGABRT",
                                                                 "SIGTERM"):
        return "aborted, then SIGKILL" if signal_name == "SIGKILL" else "aborted"
    if m is None or signal_name == "SIGTERM" or \
            f"worker (pid {pid}) exits with" in log and m.group(2) == "1":
        return "graceful"
    return signal_name or f"code {m.group(2)}"


GRACEFUL_FAULTS = ("SIGHUP", "SIGTTOU", "SIGTERM")
NEAR = rules.CLOSED_WITHIN + WATCH_EVERY   # a death and the connections it closed, as seen


def explain_deaths(phase, ran_on):
    """pid -> [(when, why)] for each worker that died; record the ones nothing explains.

    A fault explains a death that followed it in time and in the way it stops a
    worker (``soak_rules.fault_explains``); a request whose documented end is
    its worker's explains a death that ended the way that request ends one,
    from just before its answer (the connection closed by the death) to
    ``DIES_WITHIN`` after it.
    """
    hups = booted_before_each_hup(phase.log)
    for pid in phase.booted:
        if pid in phase.alive_at_end:
            continue
        died = phase.died.get(pid)            # None: born and gone between two looks
        how = phase.how[pid] = how_it_ended(phase.log, pid)
        why, stops = [], []
        hup = 0
        for fault in phase.faults:
            aimed = fault.target == pid or pid in fault.oldest or \
                fault.name == "HUP" and (pid in fault.workers or pid in (
                    hups[hup] if hup < len(hups) else ()))
            hup += fault.name == "HUP"
            # (gone between two looks: it was alive at the fault, so it died at once; else
            # as early as it may have: just after the last look that saw it alive)
            if died is None:
                until = fault.at
            elif died <= fault.at:
                until = died
            else:
                until = max(fault.at, min(died, earliest_death(phase, pid)))
            # (what kept a graceful stop going: C code holding the GIL, or a machine that
            # ran nothing meanwhile: its exit then outlasts --timeout, as stock's would)
            starved = phase.starvation.during(fault.at, until) if phase.starvation else 0.0
            explains = aimed and rules.fault_explains(
                fault.name, how, fault.at, until,
                delayed=gil_held(phase, ran_on, pid, fault.at, until) + starved,
                stuck=phase.flavor == "gthread" and ran_during(
                    phase, ran_on, pid, rules.STUCK_IN_THREADS, fault.at, until) > 0)
            if explains:
                why.append((fault.at, f"SIG{fault.name}"))
            # A graceful fault stopped it from then on, whatever ended it (its sections
            # end at the graceful limit): if it explains its death, or was surely its
            # (a TTOU aimed at several oldest workers stopped only one).
            if f"SIG{fault.name}" in GRACEFUL_FAULTS and fault.at <= until and (
                    explains or aimed and fault.oldest in ((), (pid,))):
                stops.append(fault.at)
        for r in phase.results:
            if ran_on.get(r.rid) == pid and r.expect is not None \
                    and how in r.expect.ends_worker and (died is None or ended_by(phase, ran_on, r, died)):
                why.append((r.start, f"{r.kind} request {r.rid}"))
                if how == "graceful":     # the threaded worker retiring: at the earliest
                    stops.append(r.start + r.expect.lo)   # from its deadline + the grace
        phase.deaths[pid] = why
        if stops and died is not None:
            phase.stopping[pid] = min(stops)
            phase.held_gil[pid] = gil_held(phase, ran_on, pid, min(stops), died)
        if not why:
            when = "" if died is None else f" {died - phase.started:.1f} s into the phase"
            ran = "; ".join(f"{r.kind} {r.rid} {r.outcome} {r.began - phase.started:.1f}-"
                            f"{r.end - phase.started:.1f} s (rule met: {r.expect})"
                            for r in phase.results if ran_on.get(r.rid) == pid)
            phase.unexpected.append((f"worker {pid} ended ({how}){when}, and no fault or "
                                     f"request explains it; it ran: {ran or 'nothing'}", pid))


def booted_before_each_hup(log):
    """[the workers booted before the arbiter handled the n-th HUP], from its log.

    A worker it spawned after the soak listed its workers, but before it handled
    the HUP, is an old worker that the reload stops too."""
    found, booted = [], set()
    for line in log.splitlines():
        booting = re.search(r"Booting worker with pid: (\d+)", line)
        if booting:
            booted.add(int(booting.group(1)))
        elif "Handling signal: hup" in line:
            found.append(set(booted))
    return found


def ran_during(phase, ran_on, pid, kinds, since, until, besides=None):
    """Seconds that requests of ``kinds`` (``besides`` excepted) ran in worker ``pid``
    between ``since`` and ``until``.  ``kinds`` never holds ``fast``: the requests of
    the other kinds are indexed by worker once (the load makes ``fast`` ones many)."""
    assert "fast" not in kinds
    if phase.by_worker is None:
        phase.by_worker = collections.defaultdict(list)
        for r in phase.results:
            if r.kind != "fast" and r.rid in ran_on:
                phase.by_worker[ran_on[r.rid]].append(r)
    return sum(max(0.0, min(r.end, until) - max(r.began, since))
               for r in phase.by_worker.get(pid, ()) if r.kind in kinds and r is not besides)


def gil_held(phase, ran_on, pid, since, until):
    """Seconds that C code held the GIL (``soak_rules.GIL_KINDS``) in worker ``pid``."""
    return ran_during(phase, ran_on, pid, rules.GIL_KINDS, since, until)


def ended_by(phase, ran_on, r, died):
    """Is a death at ``died`` where request ``r``, which ends its worker, puts it?

    Under gevent, a neighbour blocking the hub after the answer delays the exit
    (then the arbiter's SIGKILL) by as long as it blocked; a starved machine, by as
    long as it ran nothing (``Starvation``).
    """
    late = ran_during(phase, ran_on, ran_on.get(r.rid), rules.BLOCKERS[phase.flavor],
                      r.end, died, besides=r)
    if phase.starvation is not None:    # (and a machine that ran nothing meanwhile)
        late += phase.starvation.during(r.end, died)
    return r.end - NEAR <= died <= r.end + rules.DIES_WITHIN + late


def closes_at_death(phase, pid):
    """Does worker ``pid``'s death close what it still runs?

    An abrupt end (SIGKILL, an abort) or a request's end of it (the threaded
    worker retiring) does; a graceful stop only once its graceful timeout ran
    out (``GRACEFUL`` after the earliest fault that stopped it), and in the
    sync worker only if C code held the GIL meanwhile: otherwise it answers
    its one request, a section past the graceful limit with a ``504``.  (Under
    gevent and in the threaded worker, Gunicorn's own end of the graceful wait
    closes what still runs then, a request outside sections.)
    """
    if phase.how[pid] != "graceful" or any(
            why not in GRACEFUL_FAULTS for _, why in phase.deaths[pid]):
        return True
    return phase.died[pid] - phase.stopping[pid] >= rules.GRACEFUL - WATCH_EVERY and (
        phase.flavor != "sync" or phase.held_gil[pid] > 0)


def collateral(phase, r, ran_on):
    """Did ``r`` end because its worker died of an explained cause while it ran?

    A connection closed (or a body cut short) by the death ends when it does,
    if that death closes what it still runs (``closes_at_death``); an answer (a
    graceful stop's ``504`` or ``200``, ``soak_rules.collateral_allowed``; the
    threaded worker's retirement is one) comes before the death, by at most
    ``COLLATERAL_WITHIN``.  A request that never reached the app (no journal
    line) may have been accepted by any worker that died after it was sent;
    the threaded worker closes those as its graceful stop begins.
    """
    pid = ran_on.get(r.rid)
    if pid is None:
        return r.outcome == "closed" and any(
            r.start <= died and (
                closed_by_death(phase, worker, r) and closes_at_death(phase, worker)
                or phase.flavor == "gthread" and worker in phase.stopping
                and phase.stopping[worker] - WATCH_EVERY <= r.end <= died + NEAR
                + seen_late(phase, died, r.end))
            for worker, died in same_server(phase, r.rid, phase.died.items())
            if phase.deaths.get(worker))
    died = phase.died.get(pid)
    causes = [why for _, why in phase.deaths.get(pid, ()) if not why.endswith(r.rid)]
    if not causes or died is None:
        return False
    if r.outcome in ("closed", "truncated"):
        return closed_by_death(phase, pid, r) and closes_at_death(phase, pid)
    stop = phase.stopping.get(pid)
    graceful = stop is not None and stop + rules.GRACEFUL - NEAR <= r.end <= (
        stop + rules.GRACEFUL + rules.CANCEL_WITHIN + rules.SLACK + r.blocked
        + phase.held_gil[pid])       # the graceful limit, and the cancellation's delays
    return rules.collateral_allowed(
        r.kind, phase.flavor, r.outcome, r.body, graceful=graceful,
        aborted=phase.how[pid] in ("code 1",) + rules.ABORTED) \
        and r.end - NEAR - seen_late(phase, died, r.end) <= died <= r.end \
        + rules.COLLATERAL_WITHIN


def closed_by_death(phase, pid, r):
    """Could worker ``pid``'s death have closed ``r``'s connection when the client saw it?

    The death is known to lie between the watcher's last look that saw the worker
    alive and the first that saw it gone; on a busy machine the looks come late, so
    it is that interval, not its end, that the close must follow (``NEAR``).
    """
    died = phase.died[pid]
    return earliest_death(phase, pid) - NEAR <= r.end <= died + NEAR + seen_late(
        phase, died, r.end)


def seen_late(phase, since, until):
    """How much later than it happened a client may have seen an end between ``since``
    and ``until``: the soak's own stops meanwhile (``OwnStalls``)."""
    return phase.own_stalls.during(since, until) if phase.own_stalls is not None else 0.0


def earliest_death(phase, pid):
    """The earliest a worker seen gone may have died: after the last look that saw it
    alive, and at most ``SEEN_GONE_WITHIN`` before the first that saw it gone (a gap
    between looks longer than that excuses no more)."""
    died = phase.died[pid]
    return max(phase.last_alive.get(pid, died), died - SEEN_GONE_WITHIN)


def same_server(phase, rid, pids_and_more):
    """Keep the (pid, ...) items of workers of the server that request ``rid`` went to."""
    sentinel = "-sentinel-" in rid
    return [item for item in pids_and_more if (item[0] in phase.sentinel) == sentinel]


SECOND_LOOK_WITHIN = 0.5    # from what woke the arbiter to the SIGKILL it sent, as seen
ARBITER_ROUND = 1.0         # the arbiter looks for stale workers at least this often


def second_look(phase, pid, began):
    """Did the arbiter look again right after its SIGABRT to ``pid`` (and SIGKILL it)?

    It looks at every signal it gets: another of its workers' exit, or one the
    soak sent it (see ``soak_rules.aborted_by_the_arbiter``).  A HUP's reload
    waits up to the graceful timeout for the old workers without looking
    (Gunicorn 27): the exits it saw meanwhile wake the arbiter again as the
    reload ends, right after its first look, which sends the SIGABRT to a
    worker that went stale during the reload, or less than one of the
    arbiter's rounds (``ARBITER_ROUND``) before it: its request (``began``)
    started less than --timeout and a round before the HUP (a worker's
    heartbeat comes just before it takes a request), so the last look before
    the HUP may have found it fresh.  (Found by a quick soak: a request that
    began 2.3 s before a HUP, its worker stale 0.3 s before it.)
    """
    died = phase.died.get(pid)
    if phase.how.get(pid) != "aborted, then SIGKILL" or died is None:
        return False
    sentinel = pid in phase.sentinel
    exits = [at for other, at in phase.died.items()
             if other != pid and (other in phase.sentinel) == sentinel]
    woke = exits + [f.at for f in phase.faults if f.name in ("TTIN", "TTOU") and not sentinel]
    woke += [f.at + rules.GRACEFUL for f in phase.faults if f.name == "HUP" and not sentinel
             and began > f.at - rules.TIMEOUT - ARBITER_ROUND
             and any(f.at <= at <= f.at + rules.GRACEFUL + WATCH_EVERY for at in exits)]
    return any(died - SECOND_LOOK_WITHIN - WATCH_EVERY <= at <= died + WATCH_EVERY
               for at in woke)


def owed_deaths(phase, ran_on):
    """Requests met a rule that ends their worker: did it (``always_ends``, ``second_look``)?

    One that did not is judged again as collateral (a fault's SIGKILL closes a
    hang's connection too), else it is unexpected for that reason (``owed``).
    """
    for r in phase.results:
        expect, pid = r.expect, ran_on.get(r.rid)
        if expect is None or not (expect.always_ends or expect.second_look):
            continue
        died = phase.died.get(pid)
        if expect.always_ends and (pid not in phase.deaths or died is not None
                                   and not ended_by(phase, ran_on, r, died)):
            why = ("lived on" if pid not in phase.deaths else
                   f"died {died - r.end:+.2f} s after the answer")
        elif expect.second_look and not second_look(phase, pid, r.began):
            why = (f"ended ({phase.how.get(pid)}) with no second look of the arbiter "
                   f"right after its SIGABRT")
        else:
            continue
        r.expect, r.verdict = None, ""
        r.owed = (f"{r.kind} ({r.rid}, worker {pid}): got {r.outcome} after "
                  f"{r.end - r.began:.2f} s, an end that takes its worker with it "
                  f"({expect}), but the worker {why}")


def blocked_for(phase, r, ran_on, holds):
    """How long ``r`` was stopped while it ran, in seconds: by neighbours that stop the
    others (``soak_rules.BLOCKERS``) on its worker, and for a GIL hold within its cap
    (``gil``), by the machine (``holds``: rid -> seconds its C call took; see
    ``soak_rules.stretched``).  A neighbour's GIL hold also stretches this one's, so
    the two are not added: the longer counts.  And by a machine that ran nothing
    meanwhile (``Starvation``).  A request that never reached the app (no journal
    line) has no known worker: the one whose neighbours stopped it longest counts (a
    GIL held by one of them kept its thread from reaching the app, and its worker's
    guard from ending it at --timeout: seen in a quick soak beside the suite)."""
    starved = phase.starvation.during(r.began, r.end) if phase.starvation else 0.0
    blockers = rules.BLOCKERS[phase.flavor]
    pid = ran_on.get(r.rid)
    if pid is None:
        return max((ran_during(phase, ran_on, worker, blockers, r.began, r.end)
                    for worker in set(ran_on.values())), default=0.0) + starved
    neighbours = ran_during(phase, ran_on, pid, blockers, r.began, r.end, besides=r)
    if r.kind == "gil" and r.rid in holds:
        return max(neighbours, rules.stretched(holds[r.rid])) + starved
    return neighbours + starved


def judge(phase, ran_on, began, holds=None, returned=None):
    """Each result's verdict, from its worker (``ran_on``: rid -> pid) and its time there.

    A request's time is bounded below from when it was sent, and above from
    when its worker's app began it (``began``: rid -> monotonic, the
    journal's): a sync worker's requests wait in the listen queue while all
    workers are busy.  ``holds`` (rid -> seconds): how long the GIL holds took;
    ``returned``: the GIL-holding requests whose call returned (None: all did; other
    kinds ignore it).
    """
    def call_returned(r):
        return returned is None or r.rid in returned
    for r in phase.results:
        r.began = began.get(r.rid, r.start)
    for r in phase.results:
        r.blocked = blocked_for(phase, r, ran_on, holds or {})
        r.expect = rules.verdict(r.kind, phase.flavor, r.outcome, r.end - r.start,
                                 r.end - r.began, r.body, r.blocked, r.rid in ran_on,
                                 call_returned(r))
        if r.expect is not None:
            r.verdict = "expected"
    explain_deaths(phase, ran_on)
    owed_deaths(phase, ran_on)
    for r in phase.results:
        if r.verdict:
            continue
        if collateral(phase, r, ran_on):
            r.verdict = "collateral"
            continue
        allowed = " or ".join(str(e) for e in rules.expected(
            r.kind, phase.flavor, r.blocked, r.rid in ran_on, call_returned(r)))
        r.verdict = r.owed or (
            f"{r.kind} ({r.rid}, worker {ran_on.get(r.rid, '?')}): got {r.outcome} after "
            f"{r.end - r.began:.2f} s there ({r.end - r.start:.2f} s since sent) "
            f"{r.body.strip()[:80]!r}; expected {allowed}")
        phase.unexpected.append((r.verdict, ran_on.get(r.rid)))


def grew_for_good(values, band):
    """A leak: the last third of the samples has a median above the first third's, by over ``band``.

    Counts that only swing (connections in flight, a thread pool at work) are
    not leaks; ``band`` is the swing allowed.  A process sampled fewer than six
    times says nothing.
    """
    third = len(values) // 3
    return third >= 2 and statistics.median(values[-third:]) > \
        statistics.median(values[:third]) + band


def per_hour(samples, column):
    """Least-squares slope of ``column`` over time, per hour."""
    ts = [s[0] for s in samples]
    vs = [s[column] for s in samples]
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else 3600 * sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / var


def leaks_of(label, samples, fd_band, thread_band, steady=False):
    """What grew for good in one process's samples: fds, threads, RSS.

    ``steady``: a process whose counts do not swing is also judged by its
    growth per hour (``SLOPE_LIMITS``), after its warm-up, when sampled long
    enough, if it was sustained: the last third's median above the first
    third's by ``SLOPE_RISE`` (one fd or thread opened once is no leak); its
    threads too unless a pool may start some (``thread_band``).
    """
    found = []
    settled = [s for s in samples if s[0] >= samples[0][0] + WARM_UP_SECONDS]
    if steady and settled and settled[-1][0] - settled[0][0] >= MIN_SLOPE_SECONDS:
        for column, name, unit in ((1, "RSS MiB", 1024), (2, "open fds", 1), (3, "threads", 1)):
            if name == "threads" and thread_band > 1:
                continue
            slope = per_hour(settled, column) / unit
            values = [s[column] / unit for s in settled]
            third = len(values) // 3
            rise = statistics.median(values[-third:]) - statistics.median(values[:third])
            if slope > SLOPE_LIMITS[name] and rise >= SLOPE_RISE[name]:
                found.append(f"{label}: {name} grew {slope:+.1f} per hour over "
                             f"{settled[-1][0] - settled[0][0]:.0f} s, past "
                             f"{SLOPE_LIMITS[name]} per hour")
    for column, name, band in ((2, "open fds", fd_band), (3, "threads", thread_band),
                               (1, "RSS KiB", RSS_BAND_MIB * 1024)):
        values = [s[column] for s in samples]
        if grew_for_good(values, band):
            found.append(f"{label}: {name} grew for good (median of the first third "
                         f"{statistics.median(values[:len(values) // 3]):g}, of the last "
                         f"{statistics.median(values[-(len(values) // 3):]):g}): {values}")
    grown = (max(s[1] for s in samples) - samples[0][1]) / 1024
    if grown > RSS_GROWTH_LIMIT_MIB:
        found.append(f"{label}: RSS grew {grown:.1f} MiB")
    return found


def growth(phase, masters, sentinel, serving):
    """Rows of the resource table, and leaks found (fds, threads, RSS that grew for good).

    ``masters``: the arbiters' pids; ``sentinel``: the sentinel server's pids,
    whose one client leaves its fds no swing to speak of.  A threaded worker's
    pool starts threads as requests come, up to ``--threads``.  ``serving``:
    pid -> when a worker began its first request; it is judged from then on (a
    worker that TTIN or HUP started waits idle until the load finds it).
    """
    pool = common.THREADS if phase.flavor == "gthread" else 1
    rows = {}
    for label, pids in (("arbiter", masters),
                        ("workers", [p for p in phase.samples if p not in masters])):
        long_lived = [p for p in pids if len(phase.samples[p]) >= 4]
        for pid in long_lived:
            steady = pid in masters or pid in sentinel
            who = f"{'sentinel ' if pid in sentinel else ''}{label.rstrip('s')} {pid}"
            samples = [s for s in phase.samples[pid]
                       if pid in masters or s[0] >= serving.get(pid, float("inf"))]
            if len(samples) < 4:
                continue
            phase.leaks.extend(leaks_of(who, samples, 2 if steady else CLIENTS + LOAD_CLIENTS + 1,
                                        1 if pid in masters else pool,
                                        steady=steady))
        if not long_lived:
            rows[label] = ("-", "-", "-", "-", 0)
            continue

        def life(pid):
            return phase.samples[pid][-1][0] - phase.samples[pid][0][0]

        longest = max(long_lived, key=life)
        rss = f"{phase.samples[longest][-1][1] / 1024:.1f}"
        sloped = [p for p in long_lived if life(p) >= MIN_SLOPE_SECONDS]
        if not sloped:     # a slope over seconds says nothing per hour
            rows[label] = (rss, "n/a", "n/a", "n/a", f"{life(longest):.0f}")
            continue
        rows[label] = (rss, *(f"{max(per_hour(phase.samples[p], c) for p in sloped) / d:+.1f}"
                              for c, d in ((1, 1024), (2, 1), (3, 1))),
                       f"{life(longest):.0f}")
    return rows


# -- a phase ---------------------------------------------------------------------------------------
def start_server(worker, workers, path, name):
    from tests.gunicorn_server import Server
    journal_path = os.path.join(path, f"journal-{name}")
    os.makedirs(os.path.join(path, name))
    srv = Server(os.path.join(path, name), **common.spec(
        worker, app="benchmarks.soak_app:app", timeout=int(rules.TIMEOUT), workers=workers,
        env={"SOAK_JOURNAL": journal_path}, ready_path="/fast"))
    try:
        srv.start()
    except AssertionError as exc:
        srv.stop()
        common.fail(f"gunicorn -k {worker} did not start: {exc}")
    return srv, journal_path


def stop_server(srv, phase):
    """A graceful stop: the arbiter and every worker must go by themselves.  Processes left."""
    master = srv.proc.pid
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(rules.GRACEFUL + 10)
    except Exception:
        phase.unexpected.append((f"the arbiter {master} did not exit after SIGTERM", None))
    time.sleep(1)
    return len(in_session(master))


def run_phase(flavor, worker, workers, seconds, path, rng):
    phase = Phase(flavor)
    servers = []
    try:
        srv, journal_path = start_server(worker, workers, path, flavor)
        servers.append(srv)
        sentinel, sentinel_journal = start_server(worker, 1, path, f"{flavor}-sentinel")
        servers.append(sentinel)
        phase.starvation, phase.own_stalls = Starvation(), OwnStalls()
        phase.started = time.monotonic()
        phase.seconds = seconds
        until = phase.started + seconds
        every = max(3.0, min(15.0, seconds / 7))
        stop_watching = threading.Event()
        cards, lock = deck(rules.kinds_for(flavor), rng), threading.Lock()
        calm = deck(rules.survived_by(flavor), random.Random(rng.random()))
        threads = [threading.Thread(target=client, args=(srv, phase, cards, lock, until, n))
                   for n in range(CLIENTS)]
        threads += [threading.Thread(target=load_client, args=(srv, phase, until, n))
                    for n in range(LOAD_CLIENTS)]
        threads.append(threading.Thread(target=client, args=(
            sentinel, phase, calm, threading.Lock(), until, "sentinel")))
        threads.append(threading.Thread(target=faults, args=(
            srv, phase, until, every, random.Random(rng.random()), journal_path)))
        watcher = threading.Thread(target=watch, args=(servers, phase, stop_watching,
                                                       min(5.0, seconds / 20)))
        for t in threads + [watcher]:
            t.daemon = True
            t.start()
        for t in threads:
            t.join(seconds + rules.CLIENT_TIMEOUT + 15)
            if t.is_alive():
                common.fail(f"{flavor}: a client or the fault thread did not finish")
        time.sleep(rules.GRACEFUL + 1)     # workers that were stopping finish
        phase.starvation.stop()
        phase.own_stalls.stop()
        stop_watching.set()
        watcher.join()
        masters = [s.proc.pid for s in servers]
        phase.alive_at_end = {pid for m in masters for pid in children(m)}
        for pid in phase.born.keys() - phase.alive_at_end - phase.died.keys():
            phase.died[pid] = time.monotonic()    # died after the watcher's last look
        phase.sentinel = set(phase_booted(sentinel))
        phase.booted = phase_booted(srv) + phase_booted(sentinel)
        phase.log = srv.log() + sentinel.log()
        phase.leftovers = sum(stop_server(s, phase) for s in servers)
        ran = {**journal(journal_path), **journal(sentinel_journal)}
        judge(phase, {rid: pid for rid, (pid, _) in ran.items()},
              {rid: began for rid, (_, began) in ran.items()},
              {**gil_holds(journal_path), **gil_holds(sentinel_journal)},
              returned_calls(journal_path) | returned_calls(sentinel_journal))
        serving = {}
        for pid, began in ran.values():
            serving[pid] = min(began, serving.get(pid, began))
        rows = growth(phase, masters, {masters[1], *phase_booted(sentinel)}, serving)
        for pattern in ("the guard thread failed", "Unhandled exception", "Exception in thread"):
            if pattern in phase.log:
                phase.unexpected.append((f"the log says {pattern!r}", None))
        for what in never_happened(phase):
            phase.unexpected.append((f"never happened: {what} (the run is too short)", None))
        return phase, rows
    finally:
        for s in servers:
            s.stop()
        if phase.starvation is not None and phase.starvation.proc.poll() is None:
            phase.starvation.proc.kill()
            phase.starvation.proc.wait()
        if phase.own_stalls is not None:
            phase.own_stalls.stop()


# Below this many requests of a kind, all of them closed says nothing.  A close comes
# when two workers go stale in the same round of the arbiter (the deck's clients send
# hangs at once): the first one's exit wakes the arbiter, which SIGKILLs the other
# before its SIGABRT handler has run (each close is checked for that: ``second_look``).
# That was a quarter to a third of them in --quick runs on a busy machine, and CI once
# saw both of gevent's two closed.  The 10-minute run sends well over six of each kind;
# the suite checks each worker's abort 504 on its own (tests/test_operator.py).
OWED_A_504_FROM = 6


def never_happened(phase):
    """Kinds of request and faults the phase was to have, and did not."""
    missing = [k for k in rules.kinds_for(phase.flavor)
               if not any(r.kind == k for r in phase.results)]
    missing += [f for f in FAULTS if not any(x.name == f for x in phase.faults)]
    if not any(f.in_section for f in phase.faults):
        missing.append("SIGTERM of a worker running a section")
    # A closed connection is allowed where the arbiter's SIGKILL may come first: but
    # never every time (the 504 is what the worker owes its client).  Requests ended by
    # their worker's death of another cause (collateral) say nothing about that, and a
    # few say nothing either: see OWED_A_504_FROM.
    for kind in ("hang_busy", "hang_wait", "cap_busy"):
        if kind not in rules.kinds_for(phase.flavor):
            continue
        own = [r for r in phase.results if r.kind == kind and r.verdict != "collateral"]
        if len(own) >= OWED_A_504_FROM and \
                any(e.outcome == "504" for e in rules.KINDS[kind][2][phase.flavor]) and \
                not any(r.outcome == "504" for r in own):
            missing.append(f"a 504 for {kind}")
    return missing


def excerpt(log, pid, most=20):
    """The log lines of worker ``pid``, and the arbiter's about it."""
    if pid is None:
        return []
    mine = [line for line in log.splitlines()
            if f"[{pid}]" in line or f"pid:{pid}" in line or f"pid: {pid}" in line
            or f"pid {pid}" in line]
    return mine[-most:]


def report(phases, minutes):
    kinds = list(rules.KINDS)
    headers = ["kind"] + [p.flavor for p, _ in phases]
    rows = []
    for kind in kinds:
        cells = [kind]
        for phase, _ in phases:
            mine = [r for r in phase.results if r.kind == kind]
            if kind not in rules.kinds_for(phase.flavor):
                cells.append("not sent")
                continue
            outcomes = collections.Counter(r.outcome for r in mine)
            cells.append(f"{len(mine)}: " + ", ".join(f"{o} x{n}" for o, n in
                                                      sorted(outcomes.items())))
        rows.append(cells)
    print("\nRequests by kind (outcome x count; the sentinel's and the load's included), every "
          "one checked against soak_rules:")
    common.table(headers, rows)

    headers = ["worker class", "load requests", "a second", "200 latency p50 / p99 ms",
               "not 200 (collateral / unexpected)", "machine stalled s"]
    rows = []
    for phase, _ in phases:
        load = [r for r in phase.results if is_load(r)]
        ok = sorted(r.end - r.start for r in load if r.outcome == "200")
        failed = [r for r in load if r.outcome != "200"]
        rows.append([phase.flavor, len(load), f"{len(load) / phase.seconds:.0f}",
                     f"{1000 * common.percentile(ok, 50):.1f} / "
                     f"{1000 * common.percentile(ok, 99):.1f}" if ok else "-",
                     f"{len(failed)} ({sum(r.verdict == 'collateral' for r in failed)} / "
                     f"{sum(r.verdict not in ('expected', 'collateral') for r in failed)})",
                     f"{phase.starvation.total():.1f}" if phase.starvation else "-"])
    print(f"The load ({LOAD_CLIENTS} clients sending fast requests back to back, beside "
          f"the {CLIENTS} of the deck; each is judged as the deck's, and its latency counts "
          f"from the send):")
    common.table(headers, rows)

    headers = ["worker class", "requests", "unexpected", "collateral", "faults",
               "workers ended (why)", "arbiter RSS MiB / MiB/h / fds/h / threads/h",
               "workers RSS MiB / MiB/h / fds/h / threads/h", "leaks", "left behind"]
    rows = []
    for phase, growth_rows in phases:
        whys = collections.Counter(why.split()[0] if why.startswith("SIG") else "request"
                                   for w in phase.deaths.values() for _, why in w[:1])
        rows.append([
            phase.flavor, len(phase.results), len(phase.unexpected),
            sum(r.verdict == "collateral" for r in phase.results),
            ", ".join(f"{n} x{c}" for n, c in
                      sorted(collections.Counter(f.name for f in phase.faults).items())),
            f"{len(phase.deaths)} (" + ", ".join(f"{w} {c}" for w, c in sorted(whys.items())) + ")",
            " / ".join(growth_rows["arbiter"][:4]) + f" over {growth_rows['arbiter'][4]} s",
            " / ".join(growth_rows["workers"][:4]) + f" over {growth_rows['workers'][4]} s",
            len(phase.leaks), phase.leftovers])
    print("Per worker class, both servers (growth per hour: the steepest least-squares "
          f"slope over the processes sampled for {MIN_SLOPE_SECONDS} s or more; RSS: the "
          "longest-lived one's, the sentinel's):")
    common.table(headers, rows)
    for phase, _ in phases:
        if phase.unexpected or phase.leaks:
            kept = os.path.join(tempfile.gettempdir(), f"soak-{phase.flavor}-{os.getpid()}.log")
            with open(kept, "w") as f:
                f.write(phase.log)
            print(f"[{phase.flavor}] the server's whole log: {kept}")
        for line, pid in phase.unexpected + [(leak, None) for leak in phase.leaks]:
            print(f"UNEXPECTED [{phase.flavor}] {line}")
            for said in excerpt(phase.log, pid):
                print(f"    {said}")
    total = sum(len(p.results) for p, _ in phases)
    unexpected = sum(len(p.unexpected) for p, _ in phases)
    load = sum(is_load(r) for p, _ in phases for r in p.results)
    if load < MIN_LOAD * minutes:
        stalled = sum(p.starvation.total() for p, _ in phases if p.starvation)
        ran = sum(p.seconds for p, _ in phases) or 1.0
        if stalled / ran > BUSY_MACHINE:     # the machine's, not a verdict on heartworker
            print(f"NOTE the load sent {load} fast requests in {minutes:g} min, fewer than "
                  f"{MIN_LOAD} a minute, on a machine busy with other work (it ran nothing "
                  f"for {stalled:.1f} s of {ran:.0f} s): rerun it alone for the load it "
                  f"must carry")
        else:
            print(f"UNEXPECTED the load sent {load} fast requests in {minutes:g} min, fewer "
                  f"than {MIN_LOAD} a minute: it did not carry load")
            unexpected += 1
    replaced = sum(len(p.deaths) for p, _ in phases)
    leaks = sum(len(p.leaks) for p, _ in phases)
    left = sum(p.leftovers for p, _ in phases)
    print(f"soak: {total} requests, {unexpected} unexpected, {replaced} workers ended, "
          f"{leaks} leaks, {left} processes left behind "
          f"({', '.join(p.flavor for p, _ in phases)}; {minutes:g} min)")
    return unexpected == 0 and leaks == 0 and left == 0


def run(args):
    minutes = 1.0 if args.quick else args.minutes
    flavors = [f for f in FLAVORS if args.only is None or f[0] in args.only.split(",")]
    seconds = minutes * 60 / len(flavors)
    rng = random.Random(args.seed)
    phases = []
    with common.workdir() as path:
        for flavor, worker, workers in flavors:
            print(f"# {flavor}: {worker}, {workers} workers, {CLIENTS} clients, "
                  f"{seconds:.0f} s", flush=True)
            phases.append(run_phase(flavor, worker, workers, seconds, path, rng))
    if not report(phases, minutes):
        common.fail("the soak found unexpected outcomes, leaks or leftover processes (above)")


def configure(parser):
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="total length, shared by the worker classes (default 10)")
    parser.add_argument("--only", help="comma-separated worker classes: sync,gevent,gthread")
    parser.add_argument("--seed", type=int, default=SEED, help="the deck's shuffle")


if __name__ == "__main__":
    common.main(run, "Soak: mixed traffic and faults, every answer checked", configure)
