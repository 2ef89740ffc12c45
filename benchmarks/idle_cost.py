"""Idle cost: CPU time and RSS of an idle worker, heartworker vs stock, over the same minute.

    python benchmarks/idle_cost.py [--quick]

Six servers (stock and heartworker; sync, gevent and gthread; one worker each,
``--timeout 30``) run at once, so they share the same machine noise.  Each
serves a few requests first (so lazy imports and the first request's work
are done), then sits idle while we read, at the start and the end of the
window, the worker's utime+stime from ``/proc/<pid>/stat`` (clock ticks,
10 ms), its threads' run time from ``/proc/<pid>/task/*/schedstat`` (ns: an
idle worker often uses less than one tick a minute), and VmRSS from
``/proc/<pid>/status``.
"""

import time

import common

CPU_TARGET, RSS_TARGET_KIB = 0.1, 1024   # percent of one core; KiB more than stock


def sample(pid):
    return common.cpu_seconds(pid), common.cpu_seconds_precise(pid), common.rss_kib(pid)


def run(args):
    window = 5 if args.quick else 60
    print(f"# idle window {window} s, all six workers at once, --timeout 30; one tick "
          f"= {1000 / common.CLK_TCK:.0f} ms = {100 / common.CLK_TCK / window:.3f} % "
          f"over the window")
    with common.servers([common.spec(worker, timeout=30) for worker in common.WORKERS]) as started:
        pids = {}
        for srv in started:
            for _ in range(5):
                if srv.get("/pid").status_code != 200:
                    common.fail(f"-k {srv.worker} does not answer /pid")
            pids[srv.worker] = common.only_worker_pid(srv)
        time.sleep(1)   # let the last request's work settle
        before = {worker: sample(pid) for worker, pid in pids.items()}
        start = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - start
        after = {worker: sample(pid) for worker, pid in pids.items()}
        for srv in started:
            if srv.worker_pids() != [pids[srv.worker]]:
                common.fail(f"-k {srv.worker}'s worker was replaced during the window:\n"
                            f"{srv.log()}")

    def cpu(worker, field):
        return 100.0 * (after[worker][field] - before[worker][field]) / elapsed

    rows = []
    for label, stock, heart in common.PAIRS:
        extra_cpu = cpu(heart, 1) - cpu(stock, 1)
        extra_rss = after[heart][2] - after[stock][2]
        rows.append([label, f"{cpu(stock, 0):.3f} / {cpu(heart, 0):.3f}",
                     f"{cpu(stock, 1):.4f} / {cpu(heart, 1):.4f}",
                     f"{extra_cpu:+.4f} (<= {CPU_TARGET})", common.verdict(extra_cpu <= CPU_TARGET),
                     f"{after[stock][2] / 1024:.1f} / {after[heart][2] / 1024:.1f}",
                     f"{extra_rss / 1024:+.2f} (<= {RSS_TARGET_KIB / 1024:g})",
                     common.verdict(extra_rss <= RSS_TARGET_KIB)])
    common.table(["worker", "CPU % stock / heartworker (stat ticks)",
                  "CPU % stock / heartworker (schedstat)", "extra CPU %", "result",
                  "RSS MiB stock / heartworker", "extra RSS MiB", "result"], rows)


if __name__ == "__main__":
    common.main(run, "Idle cost: an idle worker's CPU and RSS, heartworker vs stock")
