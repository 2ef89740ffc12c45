"""Boot time: from spawning Gunicorn to the first request served, heartworker vs stock.

    python benchmarks/boot_time.py [--quick]

Each boot starts a fresh ``gunicorn`` (one worker) and asks for ``/pid``
until it answers 200.  The listening socket exists before Gunicorn does (see
``tests/gunicorn_server.py``), so the first request simply waits in the
backlog and is answered the moment the worker serves: no polling interval
blurs the result (a failed request is retried every 10 ms).  The time counts
from just before the process is spawned, so it includes the interpreter,
Gunicorn's and the app's imports, the fork and the worker's init.  Boots of
stock and heartworker alternate (A B, B A, ...) and the ratio heartworker /
stock is taken per round.
"""

import contextlib
import os
import signal
import time

import requests

import common
from tests.gunicorn_server import Server

RETRY, TARGET = 0.01, 1.02


def boot_seconds(path, worker):
    srv = Server(path, **common.spec(worker, timeout=30))
    start = time.monotonic()
    try:
        srv.start(ready=False)
        while time.monotonic() - start < 30:
            if srv.proc.poll() is not None:
                common.fail(f"gunicorn -k {worker} exited with {srv.proc.returncode}:\n{srv.log()}")
            try:
                if srv.get("/pid", timeout=30).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(RETRY)
        common.fail(f"gunicorn -k {worker} served nothing in 30 s:\n{srv.log()}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(srv.proc.pid, signal.SIGKILL)   # no graceful shutdown to wait for
        srv.stop()


def run(args):
    rounds = 2 if args.quick else 20
    print(f"# {rounds} boots of each, interleaved A B / B A; one worker, the tests' app")
    rows = []
    with common.workdir() as path:
        for label, stock, heart in common.PAIRS:
            times = {stock: [], heart: []}
            for _, worker in common.interleaved(rounds, [stock, heart]):
                times[worker].append(boot_seconds(path, worker))
            ratios = [h / s for s, h in zip(times[stock], times[heart])]
            ratio = common.median(ratios)
            stock_ms, heart_ms = (common.median(times[w]) * 1000 for w in (stock, heart))
            rows.append([label, f"{stock_ms:.0f}", f"{heart_ms:.0f}", f"{heart_ms / stock_ms:.3f}",
                         f"{ratio:.3f}", common.spread(ratios), f"<= {TARGET}",
                         common.verdict(ratio <= TARGET)])
    common.table(["worker", "stock ms (median)", "heartworker ms (median)", "ratio of medians",
                  "ratio (median of rounds)", "ratio spread", "target", "result"], rows)


if __name__ == "__main__":
    common.main(run, "Boot time: spawn to first served request, heartworker vs stock")
