"""What every benchmark shares: the machine header, statistics, tables, servers.

Scripts run from the repo root (``python benchmarks/<name>.py``); importing
this module puts the repo root on ``sys.path`` so that ``heartworker`` and
``tests.gunicorn_server`` import.  A benchmark never prints a number it did
not measure: on any doubt it calls :func:`fail`, which exits non-zero.
"""

import argparse
import compileall
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (label, stock Gunicorn worker, heartworker worker), compared side by side.
PAIRS = [("sync", "sync", "heartworker.SyncWorker"),
         ("gevent", "gevent", "heartworker.GeventWorker"),
         ("gthread", "gthread", "heartworker.ThreadWorker")]
WORKERS = [worker for _, stock, heart in PAIRS for worker in (stock, heart)]
THREADS = 4     # --threads of the threaded workers


def spec(worker, **kwargs):
    """Server arguments for ``worker`` (the threaded ones get ``--threads``)."""
    if worker in ("gthread", "heartworker.ThreadWorker"):
        kwargs["args"] = ["--threads", str(THREADS)] + list(kwargs.get("args", []))
    return dict(worker=worker, **kwargs)


CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    pass


def fail(message):
    """Stop the benchmark loudly: nothing half-measured gets printed as a result."""
    raise BenchmarkError(message)


def parse_args(description, configure=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: few repetitions, numbers only indicative")
    if configure is not None:
        configure(parser)
    return parser.parse_args()


def main(run, description, configure=None):
    """Parse the arguments, print the machine header, run, and exit non-zero on failure."""
    args = parse_args(description, configure)
    # Byte-compile heartworker as ``pip install`` would: an editable checkout under
    # PYTHONDONTWRITEBYTECODE would otherwise recompile it at every worker boot,
    # while Gunicorn's own modules were compiled when they were installed.
    compileall.compile_dir(os.path.join(ROOT, "heartworker"), quiet=1)
    try:
        print(machine_header(description, args.quick), flush=True)
        run(args)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        sys.exit(1)


# -- the machine ------------------------------------------------------------------
def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_header(title, quick):
    import heartworker
    return "\n".join([
        f"# {title}{'  (--quick: smoke run, numbers only indicative)' if quick else ''}",
        f"# {datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu_model()}), "
        f"Linux {platform.release()}",
        f"# Python {platform.python_version()}, gunicorn {_version('gunicorn')}, "
        f"gevent {_version('gevent')}, heartworker {heartworker.__version__}",
        f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ])


# -- statistics ---------------------------------------------------------------------
def median(values):
    return statistics.median(values)


def percentile(values, p):
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        fail("percentile of no values")
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def spread(values):
    """The range of per-round values, as printed next to their median."""
    return f"{min(values):.3f}-{max(values):.3f}"


def verdict(ok):
    return "met" if ok else "MISSED"


# -- output --------------------------------------------------------------------------
def table(headers, rows):
    """Print a Markdown table (so results paste straight into benchmarks/README.md)."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    print()
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(flush=True)


# -- rounds -------------------------------------------------------------------------
def alternate(round_no, variants):
    """A B in even rounds, B A in odd ones: a linear drift of the machine cancels out."""
    return list(variants) if round_no % 2 == 0 else list(reversed(variants))


def interleaved(rounds, variants):
    """Yield (round, variant): A B, B A, A B ..."""
    for n in range(rounds):
        for variant in alternate(n, variants):
            yield n, variant


# -- servers and processes ----------------------------------------------------------------
def workdir():
    return tempfile.TemporaryDirectory(prefix="heartworker-bench-", ignore_cleanup_errors=True)


def installed(module):
    """Can ``module`` be imported here (an optional extra such as uvicorn-worker)?"""
    import importlib.util
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def servers(specs):
    """Start a Server per spec (a dict of Server arguments); stop them all, always."""
    from tests.gunicorn_server import Server
    with workdir() as path, contextlib.ExitStack() as stack:
        started = []
        for spec in specs:
            srv = Server(path, **spec)
            stack.callback(srv.stop)
            try:
                started.append(srv.start())
            except AssertionError as exc:
                fail(f"gunicorn -k {spec.get('worker')} did not start: {exc}")
        yield started


def only_worker_pid(srv):
    pids = srv.worker_pids()
    if not pids:
        fail(f"no 'Booting worker' line in the log of -k {srv.worker}:\n{srv.log()}")
    return pids[-1]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15 of stat(5)


def cpu_seconds_precise(pid):
    """CPU time of a process's live threads in ns resolution (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    fail(f"no VmRSS for pid {pid}")


def require_program(name, install):
    path = shutil.which(name)
    if path is None:
        fail(f"`{name}` is not on PATH; install it with: {install}")
    return path


def run_command(cmd, timeout):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"{' '.join(cmd)} did not finish in {timeout} s")
    if done.returncode != 0:
        fail(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout
