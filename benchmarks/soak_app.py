"""The soak's WSGI app: one route per kind of request in ``benchmarks/soak_rules.py``.

Each request names itself in the ``X-Soak-Id`` header. The app appends
``<id> <pid> <monotonic>`` to the journal file (``SOAK_JOURNAL``) as it starts
the request, so that the soak knows which worker had a request when that
worker died, and how long the request ran there (Linux's monotonic clock is
the same in every process).
The route names and numbers are the soak rules' (``?s=`` seconds, ``?cap=``).
"""

import os
import time
from urllib.parse import parse_qs

from heartworker import long_section
from tests.apps.gil import hold_gil

JOURNAL = os.environ.get("SOAK_JOURNAL")


def journal(rid, held=None):
    """Append ``rid pid monotonic`` (one write on an O_APPEND file: lines never interleave);
    with ``held``, the seconds a GIL hold of the request took, as a fourth field."""
    if JOURNAL and rid:
        line = f"{rid} {os.getpid()} {time.monotonic()!r}" + ("" if held is None else f" {held!r}")
        fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def gil_section(seconds, cap, rid=None, at_least=False):
    """A section holding the GIL in one C call for about ``seconds``; journal how long
    the call really took (from outside the section: inside, a cancellation waiting
    for the call to return landed in the journaling, and the line was lost).

    The call is sized in wall time from a measure taken now, under the soak's own
    load, so that a hold meant to end within its cap does on a busy machine (sized
    in CPU time, 2.5 s took 13 s beside the load).  ``at_least``: sized in CPU time
    instead (``tests/apps/gil.py``), so that a hold meant to outlast its cap and
    --timeout always does: a busy moment that slowed the measure shrank one planned
    for 8 s to 1.6 s.  A C call that gets less of a core takes longer (4 times as
    long, seen while the test suite ran beside the soak): its length is journaled.
    """
    n = None
    if not at_least:
        n, took = 300_000, []
        for _ in range(3):      # the fastest of three: a measure the scheduler cut into is slow
            t = time.perf_counter()
            sum(range(n))
            took.append(time.perf_counter() - t)
        n = int(seconds * n / min(took))
    began = time.monotonic()
    try:
        with long_section("soak gil", cap=cap):
            if n is None:
                hold_gil(seconds)
            else:
                sum(range(n))
            journal(f"{rid}/returned" if rid else None)   # (its worker was not killed in it)
    finally:
        journal(rid, held=time.monotonic() - began)


def busy(seconds):
    """Python code that runs (and can be interrupted) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


FOREVER = 3600


def route(path, s, cap, rid=None, at_least=False):
    if path == "/fast":
        pass
    elif path == "/long":                      # waits inside a section, within its cap
        with long_section("soak long", cap=cap):
            time.sleep(s)
    elif path == "/cpu":                       # Python CPU inside a section, within its cap
        with long_section("soak cpu", cap=cap):
            busy(s)
    elif path == "/gil":                       # C code holding the GIL inside a section
        gil_section(s, cap, rid, at_least)
    elif path == "/cap_wait":                  # waits past its cap
        with long_section("soak cap_wait", cap=cap):
            time.sleep(FOREVER)
    elif path == "/cap_busy":                  # Python CPU past its cap
        with long_section("soak cap_busy", cap=cap):
            busy(FOREVER)
    elif path == "/stalled":                   # progress, then none: ended at its stall limit
        with long_section("soak stalled", cap=cap, stall=s) as section:
            for i in range(3):
                busy(0.3)
                section.progress(f"step {i}")
            busy(FOREVER)
    elif path == "/hang_busy":                 # Python CPU outside every section
        busy(FOREVER)
    elif path == "/hang_wait":                 # waits outside every section
        time.sleep(FOREVER)
    else:
        return "404 Not Found", b"no such route\n"
    return "200 OK", f"ok {os.getpid()}\n".encode()


def app(environ, start_response):
    rid = environ.get("HTTP_X_SOAK_ID")
    journal(rid)
    q = parse_qs(environ.get("QUERY_STRING", ""))
    s = float(q.get("s", ["0"])[0])
    cap = float(q.get("cap", ["60"])[0])
    status, body = route(environ.get("PATH_INFO", "/"), s, cap, rid, "at_least" in q)
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


