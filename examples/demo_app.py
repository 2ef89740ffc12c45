"""The demo app: a slow startup, a long request, a hung request, a stuck section.

Every response body names the worker's pid, so the demo can show which worker served.

    gunicorn -k heartworker.SyncWorker --timeout 2 examples.demo_app:app
"""

import os
import time

from heartworker import long_section

# Runs inside heartworker's startup section (HEARTWORKER_STARTUP_CAP).
time.sleep(float(os.environ.get("DEMO_STARTUP_SECONDS", "5")))


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
    body = f"{path} done by worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
