"""The demo app: a slow startup in phases, a long request, a hung request, a stuck
section, and an export whose progress stops.

Every response body names the worker's pid, so the demo can show which worker served.

    HEARTWORKER_STARTUP_STALL=2 gunicorn -k heartworker.SyncWorker --timeout 2 examples.demo_app:app
"""

import os
import time

import heartworker
from heartworker import long_section


def load_model(seconds):
    """Runs inside heartworker's startup section (HEARTWORKER_STARTUP_CAP, _STALL)."""
    for shard in range(1, 6):
        time.sleep(seconds / 5)
        heartworker.progress(f"shard {shard}/5 loaded")   # each phase gets its stall window


load_model(float(os.environ.get("DEMO_STARTUP_SECONDS", "5")))


def call_flaky_upstream():
    time.sleep(3600)                  # an upstream that never answers


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/report":
        with long_section("build report", cap=30):
            time.sleep(6)             # three times --timeout: fine, it is declared
    elif path == "/hang":
        time.sleep(3600)              # outside every section: killed at --timeout
    elif path == "/stuck":
        with long_section("call flaky upstream", cap=4):
            call_flaky_upstream()     # declared, but stuck: cancelled at its cap (504)
    elif path == "/export":
        with long_section("export rows", cap=60, stall=2) as export:
            for batch in range(1, 4):
                time.sleep(0.5)
                export.progress(f"batch {batch} written")
            call_flaky_upstream()     # no more progress: cancelled 2 s later, not at 60 s
    body = f"{path} done by worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
