"""Kill latency: from a section's cap (or stock Gunicorn's --timeout) to the request's end.

    python benchmarks/kill_latency.py [--quick]

Each trial sends one request whose section starts as the request does, so
"after the cap" is the client's elapsed time minus the cap (a slight
overestimate: the section starts a little after the request is sent).

* Cancelled sections (the default at a deadline): the latency is the
  client's, from the cap to its ``504``, and the worker must live on.
* The backstop (``cancel=False``, a swallowed cancellation, C code holding
  the GIL) and stock Gunicorn: the worker's death is seen by polling
  ``/proc/<pid>`` every 2 ms from the start of the request, and the log says
  who killed it: heartworker's guard, or the arbiter (WORKER TIMEOUT, then
  SIGKILL if SIGABRT's handler could not run).
"""

import re
import threading
import time

import requests

import common
from tests.gunicorn_server import pid_alive

SYNC, GEVENT, THREAD = "heartworker.SyncWorker", "heartworker.GeventWorker", \
    "heartworker.ThreadWorker"
UVICORN, STOCK_UVICORN = "heartworker.UvicornWorker", "uvicorn_worker.UvicornWorker"
ASGI_APP = "tests.apps.asgi_app:app"      # (the uvicorn workers'; its routes are the same)
CAP, GRACE, STOCK_TIMEOUT = 1, 1, 2
# (case, worker, --timeout, path, seconds the clock starts from, the worker dies, target s)
CASES = [
    ("sync: Python busy loop (cancelled)", SYNC, 1, f"/section_busy?s=60&cap={CAP}", CAP,
     False, 0.1),
    ("sync: blocked in time.sleep (cancelled)", SYNC, 1, f"/section_hang?cap={CAP}", CAP,
     False, 0.1),
    ("sync: blocked in a socket read (cancelled)", SYNC, 1, f"/section_recv?cap={CAP}", CAP,
     False, 0.1),
    ("gevent: busy loop blocking the hub (cancelled)", GEVENT, 1,
     f"/section_busy?s=60&cap={CAP}", CAP, False, 0.1),
    ("gevent: waiting greenlet (cancelled)", GEVENT, 1, f"/section_hang?cap={CAP}", CAP,
     False, 0.1),
    ("gthread: Python busy loop in a section (cancelled)", THREAD, 1,
     f"/section_busy?s=60&cap={CAP}", CAP, False, 0.1),
    ("gthread: Python busy loop outside sections (cancelled at --timeout)", THREAD, 1,
     "/busy?s=60", 1, False, 0.1),
    ("sync: cancel=False (aborted at the cap)", SYNC, 1, f"/section_hang?cap={CAP}&cancel=0",
     CAP, True, 0.1),
    ("gevent: cancel=False, hub blocked (aborted)", GEVENT, 1,
     f"/section_busy?s=60&cap={CAP}&cancel=0", CAP, True, 0.1),
    ("sync: swallows its cancellation (aborted at cap + grace)", SYNC, 1,
     f"/section_stubborn?cap={CAP}", CAP + GRACE, True, 0.1),
    ("sync: C call holding the GIL", SYNC, 1, f"/section_gil?s=60&cap={CAP}", CAP, True, None),
    ("gthread: blocked in time.sleep outside sections (retired: grace + graceful stop)",
     THREAD, 1, "/hang", 1 + GRACE, True, None),
    ("stock sync: --timeout 2, hung request", "sync", STOCK_TIMEOUT, "/hang", STOCK_TIMEOUT,
     True, None),
    ("uvicorn: awaiting task (cancelled)", UVICORN, 1, f"/section_hang?cap={CAP}", CAP,
     False, 0.1),
    ("uvicorn: busy loop blocking the event loop (cancelled)", UVICORN, 1,
     f"/section_busy?s=60&cap={CAP}", CAP, False, 0.1),
    ("uvicorn: loop blocked outside sections (the arbiter's abort, a 504)", UVICORN, 1,
     "/block?s=60", 1, True, None),
    ("stock uvicorn-worker: --timeout 2, loop blocked", STOCK_UVICORN, STOCK_TIMEOUT,
     "/block?s=60", STOCK_TIMEOUT, True, None),
]
POLL = 0.002
NOTES = """\
# C call holding the GIL: no Python thread (the guard included) can run, so the arbiter kills:
#   at the standing vouch (the cap) + --timeout, found by its next 1 s loop pass; SIGABRT's
#   handler cannot run either, so SIGKILL follows one pass later: expect cap + timeout + 0..2 s.
# stock: the arbiter looks once a second, so expect --timeout + 0..1 s (+ the worker's exit).
# gthread, a thread blocked in a syscall: no exception can reach it; the worker retires: it
#   stops accepting, waits --graceful-timeout (2 s here) for its other requests, and exits.
# stock gthread never ends a hung request thread (its main loop notifies whatever they do).
# uvicorn, loop blocked outside sections: the arbiter's abort at --timeout + 0..1 s, as stock;
#   heartworker's client gets a 504 (stock's sees the connection reset) and the worker
#   exits through Gunicorn's abort (stock: SIGABRT's default, a core dump, exit 134)."""


def worker_pid(srv, not_pid=None, timeout=30):
    """The pid of the server's one worker, once it answers (and is not ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(srv.get("/pid", timeout=2).text)
            if pid != not_pid and pid in srv.worker_pids():
                return pid
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.05)
    common.fail(f"no new worker answered within {timeout} s:\n{srv.log()}")


def killed_by(srv, pid):
    log = srv.log()
    if f"aborting worker (pid {pid})" in log:
        return "guard"
    if f"retiring worker (pid {pid})" in log:
        return "guard: retired"
    if f"WORKER TIMEOUT (pid:{pid})" in log:
        return "arbiter SIGKILL" if re.search(rf"Worker \(pid:{pid}\) was sent SIGKILL", log) \
            else "arbiter SIGABRT"
    return "?"


def trial(srv, path, reference, dies):
    """One request; return (client seconds after the reference, death seconds after it, by)."""
    pid = worker_pid(srv)
    limit = reference + 20
    died = []
    done = threading.Event()

    def watch():
        while not done.is_set() and time.monotonic() - start < limit:
            if not pid_alive(pid):
                died.append(time.monotonic() - start)
                return
            time.sleep(POLL)

    start = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        status = srv.get(path, timeout=limit).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    client = time.monotonic() - start
    if status == 200:
        common.fail(f"{path} answered 200 after {client:.2f} s: nothing was ended")
    if not dies:
        done.set()
        if status != 504:
            common.fail(f"{path}: a cancelled section answered {status}, not 504:\n{srv.log()}")
    watcher.join(limit)
    if dies != bool(died):
        common.fail(f"{path}: worker {pid} {'did not die' if dies else 'died'} "
                    f"(client saw {status} after {client:.2f} s):\n{srv.log()}")
    if not dies:
        return client - reference, None, "cancelled: 504, worker lives"
    srv.wait_for_log(rf"Worker \(pid:{pid}\)|Booting worker with pid: (?!{pid}\b)\d+")
    worker_pid(srv, not_pid=pid)   # the arbiter's replacement serves: ready for the next trial
    return client - reference, died[0] - reference, killed_by(srv, pid)


def run(args):
    repeats = 1 if args.quick else 5
    print(f"# {repeats} trial(s) per case; caps {CAP} s, HEARTWORKER_CANCEL_GRACE {GRACE} s; "
          f"seconds after the cap (+ grace for a swallowed cancellation; stock: after "
          f"--timeout); median and max")
    rows = []
    asgi = common.installed("uvicorn_worker")
    if not asgi:
        print("# (the uvicorn rows need heartworker[asgi]: not installed, left out)")
    for case, worker, timeout, path, reference, dies, target in CASES:
        app = {} if "Uvicorn" not in worker else {"app": ASGI_APP}
        if app and (not asgi or args.quick and target is None):
            continue        # (--quick, a smoke run: not the uvicorn references, two deaths)
        with common.servers([common.spec(worker, timeout=timeout, **app)]) as (srv,):
            results = [trial(srv, path, reference, dies) for _ in range(repeats)]
        client = [r[0] for r in results]
        death = [r[1] for r in results if r[1] is not None]
        measured = death or client
        rows.append([case, f"--timeout {timeout}", path,
                     f"{common.median(client):.3f} / {max(client):.3f}",
                     f"{common.median(death):.3f} / {max(death):.3f}" if death else "lives",
                     ", ".join(sorted({r[2] for r in results})),
                     f"<= {target}" if target else "reference",
                     f"median {common.verdict(common.median(measured) <= target)}, max "
                     f"{common.verdict(max(measured) <= target)}" if target else ""])
    common.table(["case", "gunicorn", "request", "client: after cap, median / max s",
                  "death (/proc): median / max s", "ended by", "target", "result"], rows)
    print(NOTES)


if __name__ == "__main__":
    common.main(run, "Kill latency: a section's cap (or --timeout) to its 504 or the worker's death")
