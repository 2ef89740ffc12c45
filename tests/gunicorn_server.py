"""Start real Gunicorn processes for tests and benchmarks, and always stop them.

Each server listens on a socket bound here to 127.0.0.1:0 and handed to
Gunicorn as ``fd://N`` (no fixed ports, no race for a free one), runs in its
own process group (so stopping it also kills orphaned workers), and has its
own HOME and no control socket (Gunicorn >= 25 would share one otherwise).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@lru_cache(maxsize=None)
def gunicorn_version():
    out = subprocess.run([sys.executable, "-c", "import gunicorn; print(gunicorn.__version__)"],
                         capture_output=True, text=True, check=True).stdout
    return tuple(int(p) for p in re.findall(r"\d+", out)[:2])


class Server:
    def __init__(self, workdir, app="tests.apps.app:app", worker="heartworker.SyncWorker",
                 timeout=2, workers=1, env=None, args=(), program="gunicorn", ready_path="/pid",
                 by_address=False):
        self.workdir = str(workdir)
        self.ready_path = ready_path  # answers 200 once a worker serves
        self.program = program        # or "heartworker": the launcher (python -m heartworker)
        self.app, self.worker, self.timeout = app, worker, timeout
        self.workers, self.extra_env, self.args = workers, dict(env or {}), list(args)
        self.proc = None
        self.log_path = os.path.join(self.workdir, f"gunicorn-{id(self)}.log")
        self.port = None
        # Gunicorn binds the port itself (a free one, found just before), run by its
        # console script as users run it: for a USR2 upgrade, which re-executes argv (a
        # `python -m gunicorn` re-executed is gunicorn/__main__.py run as a script, whose
        # directory shadows the stdlib's http) and cannot pass on a socket given as fd://
        self.by_address = by_address

    # -- lifecycle -----------------------------------------------------------
    def start(self, ready=True, ready_timeout=30):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        fd = sock.fileno()
        kind = ["-k", self.worker] if self.worker else []    # (None: the program's default)
        bind = f"127.0.0.1:{self.port}" if self.by_address else f"fd://{fd}"
        if self.by_address:
            sock.close()
        run = [os.path.join(os.path.dirname(sys.executable), self.program)] \
            if self.by_address else [sys.executable, "-m", self.program]
        cmd = [*run, *kind, "-b", bind,
               "--timeout", str(self.timeout), "--workers", str(self.workers),
               "--graceful-timeout", "2", "--error-logfile", "-", "--log-level", "info",
               *self.args, self.app]
        if gunicorn_version() >= (25, 0):
            cmd.insert(len(run), "--no-control-socket")
        env = dict(os.environ, HOME=self.workdir, PYTHONUNBUFFERED="1",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.update(self.extra_env)
        self._logfile = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                                         pass_fds=[] if self.by_address else [fd],
                                         stdout=self._logfile, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            sock.close()   # Gunicorn has its own copy; ours would keep accepting after it dies
        if ready:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get(self.ready_path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready in {timeout} s:\n{self.log()}")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # workers, orphans included
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._logfile.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()       # a server that did not become ready is stopped too
            raise

    def __exit__(self, *exc):
        self.stop()

    # -- talking to it ---------------------------------------------------------
    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, timeout=30):
        return requests.get(self.url(path), timeout=timeout)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, pattern, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def worker_pids(self):
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log())]


DEAD_STATES = ("Z", "X")   # a zombie, then "X" for the instant its parent reaps it


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] not in DEAD_STATES
    except (FileNotFoundError, ProcessLookupError):   # gone, or exiting as we read
        return False
