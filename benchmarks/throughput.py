"""Throughput overhead: stock Gunicorn vs heartworker under wrk, same run, interleaved.

    python benchmarks/throughput.py [--quick]

A hello-world request (``/``) and the same request inside a section on every
request (``/section``; under a stock worker the section is the no-op it is
outside heartworker); the app is ``benchmarks/app.py`` (its ASGI twin for
uvicorn-worker's ``UvicornWorker`` and heartworker's, when installed).  All the servers
run at once; each round runs wrk against every configuration, stock and
heartworker in the order A B, then B A in the next round, so machine drift
cancels.  The ratio
is heartworker req/s / stock req/s per round; its median and min-max spread
are reported.
"""

import re
import subprocess

import common

PATHS = [("no section", "/", 0.99),
         ("section on every request", "/section", 0.98)]
CONNECTIONS = {"sync": 2, "gevent": 20, "gthread": 8,    # one sync worker serves one at a time
               "uvicorn": 20}
# The ASGI pair (uvicorn-worker's, and heartworker's subclass of it), if installed.
ASGI_PAIRS = [("uvicorn", "uvicorn_worker.UvicornWorker", "heartworker.UvicornWorker")]
WRK_INSTALL = "apt-get update && apt-get install -y wrk"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}   # to milliseconds


def wrk(url, connections, seconds):
    out = common.run_command(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                              url], timeout=seconds + 30)
    bad = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors:.*)", out)
    if bad:
        common.fail(f"wrk against {url}: {bad.group(1)}\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))\s*$", out, re.M))
    if rps is None or set(latency) != {"50", "99"}:
        common.fail(f"cannot parse wrk's output for {url}:\n{out}")

    def ms(text):
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * UNITS[unit]

    return float(rps.group(1)), ms(latency["50"]), ms(latency["99"])


def run(args):
    wrk_path = common.require_program("wrk", WRK_INSTALL)
    version = subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout
    print(f"# {version.splitlines()[0] if version else 'wrk (version unknown)'}")
    rounds, seconds = (2, 1) if args.quick else (6, 5)
    print(f"# wrk -t1, {seconds} s per run, {rounds} rounds (A B / B A), connections: "
          f"sync {CONNECTIONS['sync']}, gevent {CONNECTIONS['gevent']}, gthread "
          f"{CONNECTIONS['gthread']} (--threads {common.THREADS}); one worker each")
    asgi = ASGI_PAIRS if common.installed("uvicorn_worker") else []
    pairs = [pair for pair in common.PAIRS + asgi if not args.only or pair[0] in args.only]
    specs = [common.spec(worker, timeout=30,
                         app="benchmarks.app:asgi_app" if pair in asgi else "benchmarks.app:app")
             for pair in pairs for worker in pair[1:]]
    with common.servers(specs) as started:
        by_worker = {srv.worker: srv for srv in started}
        paths = PATHS[1:] if args.quick else PATHS     # (a smoke run: the section's path)
        configs = [(label, name, path, target, stock, heart)
                   for label, stock, heart in pairs
                   for name, path, target in paths]
        results = {config: {config[4]: [], config[5]: []} for config in configs}
        for n in range(rounds):
            for config in configs:
                label, _, path, _, stock, heart = config
                for worker in common.alternate(n, [stock, heart]):
                    measured = wrk(by_worker[worker].url(path), CONNECTIONS[label], seconds)
                    results[config][worker].append(measured)
    rows = []
    for config in configs:
        label, name, _, target, stock, heart = config
        a, b = results[config][stock], results[config][heart]
        ratios = [h[0] / s[0] for s, h in zip(a, b)]
        ratio = common.median(ratios)

        def cell(runs):
            return (f"{common.median([r[0] for r in runs]):.0f}",
                    f"{common.median([r[1] for r in runs]):.2f} / "
                    f"{common.median([r[2] for r in runs]):.2f}")

        rows.append([label, name, *cell(a), *cell(b), f"{ratio:.3f}", common.spread(ratios),
                     f">= {target}", common.verdict(ratio >= target)])
    common.table(["worker", "requests", "stock req/s", "stock p50/p99 ms",
                  "heartworker req/s", "heartworker p50/p99 ms", "ratio (median)",
                  "ratio spread", "target", "result"], rows)


def options(parser):
    parser.add_argument("--only", action="append", metavar="WORKER",
                        help="measure this pair only (sync, gevent, gthread, uvicorn); "
                             "repeatable")


if __name__ == "__main__":
    common.main(run, "Throughput overhead: heartworker vs stock Gunicorn (wrk, loopback)",
                options)
