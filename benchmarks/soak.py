"""Soak: mixed traffic and faults against each heartworker worker; nothing lost, nothing leaked.

    python benchmarks/soak.py [--minutes 10] [--quick]

For each worker class (sync, gevent, threaded), a real Gunicorn with several
workers on 127.0.0.1 gets requests from a few concurrent clients, drawn from a
shuffled deck of kinds (``benchmarks/soak_rules.py``: fast ones, long work in
sections within their caps, CPU-bound and GIL-holding sections, sections past
their caps, stalled ones, hangs outside sections), while faults arrive on a
schedule: ``HUP`` reloads, ``TTIN``/``TTOU``, a worker ``SIGKILL``ed, a worker
``SIGTERM``ed while it runs a section.

Every answer is checked against what the README promises for its kind (see
``soak_rules``), and every worker that died must have died of a fault the soak
sent or of a request whose documented end is its worker's.  The worker and
arbiter processes are sampled for RSS, open fds and threads.  After a
graceful stop, no process of the server may be left.  The run fails (exit 1)
on any unexpected outcome, unexplained death, leak, leftover process, or a
kind or fault that never happened; its last line is the summary.
"""

import collections
import itertools
import os
import random
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field

import requests

import common
import soak_rules as rules

FLAVORS = [("sync", "heartworker.SyncWorker", 3),
           ("gevent", "heartworker.GeventWorker", 2),
           ("gthread", "heartworker.ThreadWorker", 2)]
CLIENTS = 4
FAULTS = ["HUP", "TTIN", "KILL", "TTOU", "TERM"]
RSS_GROWTH_LIMIT_MIB = 32     # per process over its sampled life
MIN_SLOPE_SECONDS = 60        # growth per hour only from processes sampled this long
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


@dataclass
class Fault:
    at: float
    name: str
    target: int = None      # the worker it is aimed at (KILL, TERM, TTOU's oldest)
    workers: tuple = ()     # the workers alive when it was sent


@dataclass
class Phase:
    flavor: str
    results: list = field(default_factory=list)
    faults: list = field(default_factory=list)
    samples: dict = field(default_factory=lambda: collections.defaultdict(list))
    inflight: dict = field(default_factory=dict)     # rid -> kind
    booted: list = field(default_factory=list)
    alive_at_end: set = field(default_factory=set)
    deaths: dict = field(default_factory=dict)       # pid -> [(at, why)]
    unexpected: list = field(default_factory=list)   # (what went wrong, worker pid or None)
    log: str = ""
    leftovers: int = 0
    leaks: list = field(default_factory=list)


# -- processes -------------------------------------------------------------------------
def proc_stat(pid):
    """(ppid, session id) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
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
def deck(flavor, rng):
    """Kinds in a shuffled order, each as often as its weight, forever."""
    weights = rules.kinds_for(flavor)
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
    for n in itertools.count():
        if time.monotonic() >= until:
            return
        with lock:
            kind = next(cards)
        rid = f"{phase.flavor}-{number}-{n}"
        result = Result(kind, rid, time.monotonic())
        phase.inflight[rid] = kind
        result.outcome, result.body = send(srv, kind, rid)
        result.end = time.monotonic()
        del phase.inflight[rid]
        phase.results.append(result)


def journal(path):
    """{request id: the pid of the worker that ran it} (written by soak_app)."""
    try:
        with open(path) as f:
            return dict((rid, int(pid)) for rid, pid in (line.split() for line in f))
    except FileNotFoundError:
        return {}


# -- faults and samples ----------------------------------------------------------------------
def inject(srv, phase, name, rng, journal_path):
    master = srv.proc.pid
    workers = tuple(sorted(children(master)))
    target = None
    if name in ("HUP", "TTIN", "TTOU"):
        if name == "TTOU" and workers:          # Gunicorn stops its oldest worker
            target = next((p for p in phase_booted(srv) if p in workers), None)
        os.kill(master, getattr(signal, "SIG" + name))
    elif workers:
        if name == "TERM":                      # a worker in the middle of a section
            running = journal(journal_path)
            busy = [running.get(rid) for rid, kind in list(phase.inflight.items())
                    if kind in ("long", "cpu", "gil")]
            busy = [p for p in busy if p in workers]
            target = rng.choice(busy or list(workers))
        else:
            target = rng.choice(workers)
        try:
            os.kill(target, getattr(signal, "SIG" + name))
        except ProcessLookupError:
            pass
    phase.faults.append(Fault(time.monotonic(), name, target, workers))


def phase_booted(srv):
    return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", srv.log())]


def faults(srv, phase, until, every, rng, journal_path):
    for name in itertools.cycle(FAULTS):
        wake = time.monotonic() + every
        if wake >= until:
            return
        time.sleep(max(0.0, wake - time.monotonic()))
        inject(srv, phase, name, rng, journal_path)


def sampler(srv, phase, stop, every):
    master = srv.proc.pid
    while not stop.wait(every):
        now = time.monotonic()
        workers = children(master)
        for pid in [master] + workers:
            seen = usage(pid)
            if seen is not None:
                rss, fds, threads = seen
                if pid == master:       # the arbiter holds one heartbeat file per worker
                    fds -= len(workers)
                phase.samples[pid].append((now, rss, fds, threads))


# -- verdicts ------------------------------------------------------------------------------------
def explain_deaths(phase, ran_on):
    """pid -> [(when, why)] for each worker that died; record the ones nothing explains."""
    dead = [pid for pid in phase.booted if pid not in phase.alive_at_end]
    for pid in dead:
        why = []
        for fault in phase.faults:
            if fault.target == pid or fault.name == "HUP" and pid in fault.workers:
                why.append((fault.at, f"SIG{fault.name}"))
        for r in phase.results:
            if ran_on.get(r.rid) == pid and r.verdict == "expected" and \
                    rules.ends_worker(r.kind, phase.flavor):
                why.append((r.start, f"{r.kind} request"))
        phase.deaths[pid] = why
        if not why:
            phase.unexpected.append((f"worker {pid} died, and no fault or request explains it",
                                     pid))


def collateral(phase, r, ran_on):
    """Did ``r`` end because its worker died of an explained cause, after it began?"""
    if r.outcome not in rules.COLLATERAL:
        return False
    pid = ran_on.get(r.rid)
    if pid is not None:
        causes = [(at, why) for at, why in phase.deaths.get(pid, ())
                  if not why.endswith(" request") or at != r.start]
        return any(at <= r.end + 0.5 for at, _ in causes)
    # Never reached the app: accepted by a worker that was about to die.
    return any(r.start - rules.GRACEFUL - 1 <= at <= r.end + 0.5
               for why in phase.deaths.values() for at, _ in why)


def judge(phase, ran_on):
    for r in phase.results:
        if rules.verdict(r.kind, phase.flavor, r.outcome, r.end - r.start, r.body):
            r.verdict = "expected"
    explain_deaths(phase, ran_on)
    for r in phase.results:
        if r.verdict:
            continue
        if collateral(phase, r, ran_on):
            r.verdict = "collateral"
            continue
        allowed = " or ".join(str(e) for e in rules.expected(r.kind, phase.flavor))
        r.verdict = (f"{r.kind} ({r.rid}, worker {ran_on.get(r.rid, '?')}): got {r.outcome} "
                     f"after {r.end - r.start:.2f} s {r.body.strip()[:80]!r}; expected {allowed}")
        phase.unexpected.append((r.verdict, ran_on.get(r.rid)))


def grew_for_good(values, band):
    """A leak: after a warm-up (the first third), the later half stays above the earlier by ``band``.

    Counts that only swing (connections in flight, a thread pool warming up)
    are not leaks; ``band`` is the swing allowed.
    """
    settled = values[len(values) // 3:]
    half = len(settled) // 2
    return len(settled) >= 6 and min(settled[half:]) > max(settled[:half]) + band


def per_hour(samples, column):
    """Least-squares slope of ``column`` over time, per hour."""
    ts = [s[0] for s in samples]
    vs = [s[column] for s in samples]
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else 3600 * sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / var


def growth(phase, master):
    """Rows of the resource table, and leaks found (persistent fd/thread growth, RSS)."""
    rows = {}
    for label, pids in (("arbiter", [master]),
                        ("workers", [p for p in phase.samples if p != master])):
        long_lived = [p for p in pids if len(phase.samples[p]) >= 4]
        for pid in long_lived:
            samples = phase.samples[pid]
            for column, name, band in ((2, "open fds", CLIENTS + 1), (3, "threads", 1)):
                if grew_for_good([s[column] for s in samples], band):
                    phase.leaks.append(f"{label} {pid}: {name} grew for good: "
                                       f"{[s[column] for s in samples]}")
            grown = (max(s[1] for s in samples) - samples[0][1]) / 1024
            if grown > RSS_GROWTH_LIMIT_MIB:
                phase.leaks.append(f"{label} {pid}: RSS grew {grown:.1f} MiB")
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
def run_phase(flavor, worker, workers, seconds, path, rng):
    from tests.gunicorn_server import Server
    phase = Phase(flavor)
    journal_path = os.path.join(path, f"journal-{flavor}")
    srv = Server(path, **common.spec(worker, app="benchmarks.soak_app:app",
                                      timeout=int(rules.TIMEOUT), workers=workers,
                                      env={"SOAK_JOURNAL": journal_path}, ready_path="/fast"))
    try:
        try:
            srv.start()
        except AssertionError as exc:
            common.fail(f"gunicorn -k {worker} did not start: {exc}")
        until = time.monotonic() + seconds
        every = max(3.0, min(15.0, seconds / 6))
        stop_sampling = threading.Event()
        cards, lock = deck(flavor, rng), threading.Lock()
        threads = [threading.Thread(target=client, args=(srv, phase, cards, lock, until, n))
                   for n in range(CLIENTS)]
        threads.append(threading.Thread(target=faults, args=(
            srv, phase, until, every, random.Random(rng.random()), journal_path)))
        sample = threading.Thread(target=sampler, args=(srv, phase, stop_sampling,
                                                        min(5.0, seconds / 20)))
        for t in threads + [sample]:
            t.daemon = True
            t.start()
        for t in threads:
            t.join(seconds + rules.CLIENT_TIMEOUT + 15)
            if t.is_alive():
                common.fail(f"{flavor}: a client or the fault thread did not finish")
        stop_sampling.set()
        sample.join()
        time.sleep(rules.GRACEFUL + 1)     # workers that were stopping finish
        master = srv.proc.pid
        phase.alive_at_end = set(children(master))
        phase.booted = phase_booted(srv)
        phase.log = log = srv.log()
        # A graceful stop: the arbiter and every worker must go by themselves.
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(rules.GRACEFUL + 10)
        except Exception:
            phase.unexpected.append(("the arbiter did not exit after SIGTERM", None))
        time.sleep(1)
        phase.leftovers = len(in_session(master))
        ran_on = journal(journal_path)
        judge(phase, ran_on)
        rows = growth(phase, master)
        for pattern in ("the guard thread failed", "Unhandled exception", "Exception in thread"):
            if pattern in log:
                phase.unexpected.append((f"the log says {pattern!r}", None))
        return phase, rows
    finally:
        srv.stop()


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
    print("\nRequests by kind (outcome x count), every one checked against soak_rules:")
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
    print("Per worker class (growth per hour: the steepest least-squares slope over the "
          "processes sampled; the workers' over the longest-lived one):")
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
        missing = [k for k in rules.kinds_for(phase.flavor)
                   if not any(r.kind == k for r in phase.results)]
        missing += [f for f in FAULTS if not any(x.name == f for x in phase.faults)]
        for what in missing:
            print(f"UNEXPECTED [{phase.flavor}] never happened: {what} (the run is too short)")
            phase.unexpected.append((f"never happened: {what}", None))
    total = sum(len(p.results) for p, _ in phases)
    unexpected = sum(len(p.unexpected) for p, _ in phases)
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
