"""The demo app: a slow startup, a long request, and a hung one.

    gunicorn -k heartworker.SyncWorker --timeout 2 examples.demo_app:app
"""

import os
import time

from heartworker import long_section

STARTUP_SECONDS = float(os.environ.get("DEMO_STARTUP_SECONDS", "5"))

# Runs inside heartworker's startup section: a stock worker would be killed here.
time.sleep(STARTUP_SECONDS)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/report":
        with long_section("build report", cap=30):
            time.sleep(6)             # three times --timeout: fine, it is declared
        body = b"report done\n"
    elif path == "/hang":
        time.sleep(3600)              # outside every section: killed at --timeout
        body = b"never\n"
    else:
        body = f"hello from worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
