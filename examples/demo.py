"""Run a real Gunicorn with heartworker and show what it does (``bash examples/demo.sh``)."""

import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.gunicorn_server import Server  # noqa: E402
from tests.timing import timed_get  # noqa: E402

APP = "examples.demo_app:app"


def show(srv, path, expect, ended="KILLED"):
    status, took = timed_get(srv, path)
    outcome = f"{status} after {took:.1f} s" if status == 200 else \
        f"{ended} ({status}) after {took:.1f} s"
    print(f"  GET {path:<8} -> {outcome:<32} {expect}")


def worker_pid(srv):
    return re.search(r"worker (\d+)", srv.get("/pid").text).group(1)


def main():
    work = tempfile.mkdtemp(prefix="heartworker-demo-")
    env = {"HEARTWORKER_STARTUP_STALL": "2", "HEARTWORKER_REPORT_EVERY": "2"}
    print("$ HEARTWORKER_STARTUP_STALL=2 HEARTWORKER_REPORT_EVERY=2 \\\n"
          f"  gunicorn -k heartworker.SyncWorker --timeout 2 {APP}   # 5 s to start, in 5 phases")
    start = time.monotonic()
    with Server(work, app=APP, worker="heartworker.SyncWorker", timeout=2, env=env) as srv:
        print(f"  booted and serving after {time.monotonic() - start:.1f} s "
              "(startup runs in heartworker's startup section; each phase reports progress)")
        for line in re.findall(r"heartworker: (?:section 'startup' running|startup took).*",
                               srv.log()):
            print(f"    log: {line}")
        show(srv, "/report", 'inside long_section("build report", cap=30): survives')
        show(srv, "/hang", "outside every section: killed at --timeout, as in stock")
        srv.wait_ready()
        before = worker_pid(srv)
        show(srv, "/stuck", 'long_section("call flaky upstream", cap=4): cancelled at its cap',
             ended="CANCELLED")
        after = worker_pid(srv)
        print(f"  the worker that served /stuck (pid {before}) serves on: "
              f"{'yes' if after == before else 'NO, pid ' + after}, its loaded app kept")
        show(srv, "/export", 'long_section("export rows", cap=60, stall=2): progress stops '
             'after 1.5 s, cancelled 2 s later', ended="CANCELLED")
        time.sleep(0.5)
        log = srv.log()
    print("\n  The worker's log says which section, how long, the cap, and where it was stuck:")
    m = re.search(r"^.*\[CRITICAL\] heartworker: section 'call flaky upstream'.*$", log, re.M)
    if not m:
        sys.exit("demo failed: no CRITICAL line for the stuck section:\n" + log)
    stack = log[m.end():].split("\n[")[0].rstrip().splitlines()
    print("  " + m.group(0))
    print("\n".join("  " + line for line in stack[-4:]))
    m = re.search(r"^.*\[CRITICAL\] heartworker: section 'export rows'.*?cap \d+ s", log, re.M)
    if not m:
        sys.exit("demo failed: no CRITICAL line for the stalled export:\n" + log)
    print("  " + m.group(0))

    print(f"\n$ gunicorn -k sync --timeout 2 {APP}   # stock Gunicorn, for comparison")
    with Server(work, app=APP, worker="sync", timeout=2) as srv:
        show(srv, "/report", "stock: WORKER TIMEOUT, the report is lost")


if __name__ == "__main__":
    main()
