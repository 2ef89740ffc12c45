"""The runnable framework examples in examples/, under real Gunicorn (issue 13)."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.gunicorn_server import ROOT
from tests.timing import killed, timed_get

TIMEOUT = 2
MARGIN = 3.0
SLOW_LOAD = {"EXAMPLE_SHARDS": "4", "EXAMPLE_SHARD_SECONDS": "0.7"}   # 2.8 s > --timeout


def check_example(srv, hang_ends_with):
    took = re.search(r"heartworker: startup took ([\d.]+)s", srv.log())
    assert took and float(took.group(1)) >= 2.8, ("a slow model load, reported", srv.log())
    status, took = timed_get(srv, "/predict?s=3")
    assert status == 200 and took >= 3, "the long view survives --timeout 2"
    assert srv.get("/quick").status_code == 200
    status, took = timed_get(srv, "/hang")
    assert hang_ends_with(status) and took < TIMEOUT + 1 + 2 + MARGIN, (status, took)


@pytest.mark.slow
def test_the_flask_example(server):
    pytest.importorskip("flask")
    srv = server(program="heartworker", worker=None, app="flask_app:app", env=SLOW_LOAD,
                 ready_path="/quick",
                 args=["--chdir", "examples", "--startup-stall", "5"])
    check_example(srv, lambda status: status == 504)
    assert "request ran longer than --timeout" in srv.log()


@pytest.mark.slow
def test_the_django_project_with_the_threaded_worker(server):
    pytest.importorskip("django")
    srv = server(program="heartworker", worker="heartworker.ThreadWorker",
                 app="shop.wsgi:application", env=SLOW_LOAD, ready_path="/quick",
                 args=["--chdir", "examples/django_project", "--pythonpath", "..",
                       "--threads", "4", "--startup-stall", "5"])
    # /hang sleeps: no exception reaches a thread blocked in a syscall, so the worker
    # retires (its other requests finish) and the arbiter replaces it.
    check_example(srv, killed)
    assert srv.wait_for_log("retiring worker"), srv.log()
    time.sleep(0.5)
    srv.wait_ready()
    assert srv.get("/quick").status_code == 200, "a new worker serves"


@pytest.mark.slow
def test_the_fastapi_example_with_the_uvicorn_worker(server):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn_worker")
    srv = server(program="heartworker", worker="heartworker.UvicornWorker",
                 app="fastapi_app:app", env=SLOW_LOAD, ready_path="/quick",
                 args=["--chdir", "examples", "--startup-stall", "5"])
    check_example(srv, lambda status: status == 504)
    assert "request ran longer than --timeout" in srv.log()


@pytest.mark.slow
def test_the_demo_shows_what_the_readme_says():
    # The README's first command (examples/demo.sh runs examples/demo.py in .venv).
    done = subprocess.run([sys.executable, os.path.join("examples", "demo.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"GET /report\s+-> 200", out), out
    assert re.search(r"GET /hang\s+-> KILLED \(504\)", out), out
    assert re.search(r"GET /stuck\s+-> CANCELLED \(504\)", out), out
    assert "serves on: yes" in out, "the worker that served /stuck lives on: " + out
    assert re.search(r"GET /export\s+-> CANCELLED \(504\)", out), out
    assert re.search(r"stock.*\n\s+GET /report\s+-> KILLED", out), out
