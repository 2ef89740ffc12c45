"""Route caps' cost per request: what a request that no rule matches pays, in-process.

    python benchmarks/route_cost.py [--quick]

* **no rules**: the worker installs no wrapper; what is left is
  ``HeartWorkerMixin.handle_request`` around Gunicorn's (its count of requests
  in flight for the status service, its test of ``self.routes``), timed against
  calling Gunicorn's method directly.
* **N rules, no match**: the WSGI app wrapped by ``routes.in_route_sections``
  (the match on ``REQUEST_METHOD`` and ``PATH_INFO``) against the bare app,
  for 20 glob rules and for 18 globs with 2 regular expressions among them: a
  path that begins with none of the globs' prefixes is told apart by one
  ``str.startswith`` (then only the regexes are tried); one that does is tried
  against every rule (the worst case, a row of its own).
* **match alone**: ``Routes.match`` for a path the last rule matches.
* **a request limit** (``HEARTWORKER_REQUEST_TIMEOUT`` set): the request
  registered as a deadline and taken off again around Gunicorn's
  ``handle_request``, on a real registry (no guard thread: it is the
  guard's, not the request's, work to look at it).

Batches of calls are timed with ``time.perf_counter_ns``, the cases taking
turns batch by batch; per call, median and p90 over the batches.  The goal
(issue 23): a request that no rule matches costs at most 1 µs with 20 rules.
"""

import os
import tempfile
from time import perf_counter_ns

import common
from heartworker import native
from heartworker.heartbeat import Heartbeat
from heartworker.registry import Registry
from heartworker.routes import Routes, in_route_sections, parse_rules
from heartworker.worker import HeartWorkerMixin

GLOBS = [f"{method} /{area}/{kind}=600" for method, area, kind in zip(
    ["GET", "POST", "GET,HEAD", "PUT"] * 5,
    ["export", "import", "reports", "models", "admin"] * 4,
    ["**", "*/run", "*.csv", "jobs/*/result"] * 5)]
RULES_20 = GLOBS[:20]
RULES_MIXED = GLOBS[:9] + ["~ ^/api/v[0-9]+/batch=60"] + GLOBS[9:17] + ["POST ~ /bulk$=60"] + GLOBS[17:18]
ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/catalog/items/42/reviews"}
NEAR = {"REQUEST_METHOD": "POST", "PATH_INFO": "/export/items/42/reviews"}   # tries 5 globs
BODY = [b"ok"]


def app(environ, start_response):
    return BODY


class Gunicorns:
    def handle_request(self, *args):
        return None


class Worker(HeartWorkerMixin, Gunicorns):
    routes = request_limit = heart = None
    requests_begun = requests_ended = 0


class Request:
    method, path = "GET", "/catalog/items/42/reviews"


class Tmp:
    """Stands in for Gunicorn's WorkerTmp: Heartbeat only uses fileno()."""

    def __init__(self):
        self.fd, self.path = tempfile.mkstemp(prefix="heartworker-bench-")

    def fileno(self):
        return self.fd


def limited_worker():
    """A worker with HEARTWORKER_REQUEST_TIMEOUT=30 and its registry."""
    worker = object.__new__(Worker)
    tmp = Tmp()
    os.unlink(tmp.path)
    worker.heart = Registry(Heartbeat(tmp), serving_tid=native.get_ident(), default_cap=600,
                            window=30)
    worker.heart.next_wake = float("inf")    # (a guard that looks later than the limit)
    worker.request_limit = 30.0
    return worker


def cases():
    worker, gunicorns = object.__new__(Worker), Gunicorns()
    limited, req = limited_worker(), Request()
    routed_20 = in_route_sections(app, Routes(parse_rules(RULES_20, "bench")), None, None)
    routed_mixed = in_route_sections(app, Routes(parse_rules(RULES_MIXED, "bench")), None, None)
    last = Routes(parse_rules(RULES_20, "bench"))
    last_path = "/admin/jobs/7/result"
    if last.match("PUT", last_path) is not last.rules[-1] or last.match(
            "GET", ENVIRON["PATH_INFO"]) is not None:
        common.fail("the rules do not match as this benchmark assumes")
    return {
        "handle_request: Gunicorn's directly": lambda: gunicorns.handle_request(1, 2, 3, 4),
        "handle_request: no rules (heartworker)": lambda: worker.handle_request(1, 2, 3, 4),
        "handle_request: a request limit (heartworker)":
            lambda: limited.handle_request(1, req, 3, 4),
        "app: bare": lambda: app(ENVIRON, None),
        "app: 20 glob rules, no match": lambda: routed_20(ENVIRON, None),
        "app: 18 globs + 2 regexes, no match": lambda: routed_mixed(ENVIRON, None),
        "app: 20 glob rules, no match, under their prefixes": lambda: routed_20(NEAR, None),
        "match alone: 20 rules, the last matches": lambda: last.match("PUT", last_path),
    }


def timed(call, n):
    start = perf_counter_ns()
    for _ in range(n):
        call()
    return (perf_counter_ns() - start) / n / 1000.0


def run(args):
    batches, per_batch = (30, 2_000) if args.quick else (300, 10_000)
    samples = {name: [] for name in cases()}
    calls = cases()
    for _, name in common.interleaved(batches, list(calls)):
        samples[name].append(timed(calls[name], per_batch))
    med = {name: common.median(v) for name, v in samples.items()}
    layer = med["handle_request: no rules (heartworker)"] - med[
        "handle_request: Gunicorn's directly"]
    rows = []
    for name, values in samples.items():
        base = med["handle_request: Gunicorn's directly"] if name.startswith(
            "handle_request") else med["app: bare"] if name.startswith("app") else 0.0
        over = med[name] - base
        target, ok = "", ""
        if "no match" in name and "prefixes" not in name:
            target, ok = "<= 1 us over", common.verdict(over <= 1.0)
        rows.append([name, f"{med[name]:.3f}", f"{common.percentile(values, 90):.3f}",
                     f"{over:+.3f}" if base else "", target, ok])
    print(f"# {batches} batches of {per_batch:,} calls per case, taking turns; "
          f"microseconds per call; the no-rules layer: {layer:+.3f} us per request")
    common.table(["case", "median us", "p90 us", "over its base us", "target", "result"],
                 rows)


if __name__ == "__main__":
    common.main(run, "Route caps: the cost of a request that no rule matches")
