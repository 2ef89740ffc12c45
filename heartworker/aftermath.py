"""What a worker leaves for the workers after it: stacks it could not log, and failed startups.

Gunicorn's arbiter spawns every worker from the same process, so a directory
made there (lazily, by the worker class's ``__init__``, which runs in the
arbiter) is shared by all its workers.  It holds:

* ``<pid>.stacks``: each worker's ``faulthandler`` file.  faulthandler's
  C-level handler prints every thread's stack on SIGABRT even while C code
  holds the GIL, which is the only way to know where such a worker was when
  the arbiter killed it.  It writes here, not into the error log: when Python
  *can* run, Gunicorn's abort handler follows and logs a readable traceback,
  and :meth:`Aftermath.discard` empties the raw dump so that the stacks are
  printed once; and a file of our own is never the one USR1 rotated away.
  A dump that is still there when its worker is gone was written by a worker
  that never ran Python again: the next worker to boot logs it through
  Gunicorn's logger (:meth:`Aftermath.collect`) and removes it.
* ``<pid>.startup``: there while the worker starts, so that the dump of a
  worker killed then is logged as a startup past its deadline.
* ``startups-past-cap``: how many startups in a row ran past their cap, so
  that a startup cap that is too small for the app is named and counted
  instead of silently restarting forever.
"""

import atexit
import faulthandler
import os
import shutil
import tempfile

_shared = {}   # arbiter pid -> its directory


def shared_dir(tmp_dir=None):
    """The directory of this arbiter's workers (call in the arbiter; made once per arbiter)."""
    pid = os.getpid()
    path = _shared.get(pid)
    if path is None:
        path = _shared[pid] = tempfile.mkdtemp(prefix="heartworker-", dir=tmp_dir)
        atexit.register(_remove, path, pid)
    return path


def _remove(path, pid):
    if os.getpid() == pid:   # workers inherit atexit handlers through fork: not theirs
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def ordinal(n):
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Aftermath:
    """One worker's side of the shared directory."""

    def __init__(self, path, log):
        self.path = path
        self.log = log
        self.pid = os.getpid()
        self.file = None

    # -- stacks ------------------------------------------------------------------
    def collect(self, startup_note=None):
        """Log (then remove) the dumps of workers that died without running Python again.

        A worker that died so during its startup (its ``<pid>.startup`` file is
        still there) was killed past its startup's deadline: that is logged at
        CRITICAL with ``startup_note()`` (the setting, and the count of startups
        in a row past their cap), as the guard logs a startup it ends itself.
        """
        names = set(os.listdir(self.path))
        for name in sorted(names):
            stem, dot, ext = name.partition(".")
            if ext not in ("stacks", "startup") or not stem.isdigit():
                continue
            pid = int(stem)
            if pid == self.pid and ext == "startup" or pid != self.pid and _alive(pid):
                continue
            full = os.path.join(self.path, name)
            if ext == "startup":
                if f"{stem}.stacks" not in names:
                    _unlink(full)      # (its dump, if any, is dealt with below)
                continue
            fatal, dump = self._take(full)
            _unlink(full)
            in_startup = pid != self.pid and f"{stem}.startup" in names
            if in_startup:
                _unlink(os.path.join(self.path, f"{stem}.startup"))
            if not dump:
                continue
            if "Aborted" not in fatal:     # a crash in C code: SIGSEGV, SIGBUS, SIGFPE, SIGILL
                self.log.error("heartworker: worker (pid %s) crashed (%s); its stacks then "
                               "(most recent call first):\n%s", pid, fatal, dump)
            elif in_startup and startup_note is not None:
                self.log.critical("heartworker: worker (pid %s) was killed during its startup, "
                                  "past its deadline, while no Python code could run (C code "
                                  "held the GIL)%s. Its stacks when it got SIGABRT (most "
                                  "recent call first):\n%s", pid, startup_note(), dump)
            else:
                self.log.error("heartworker: worker (pid %s) was killed while no Python code "
                               "could run (C code held the GIL); its stacks when it got "
                               "SIGABRT (most recent call first):\n%s", pid, dump)

    def log_now(self, message):
        """Log this worker's own dump now (Python runs its abort, but no traceback will
        show where it was: its startup, the threaded worker's request threads)."""
        if self.file is None:
            return
        _, dump = self._take(self.file.name)
        if dump:
            self.log.error("%s (most recent call first):\n%s", message, dump)

    @staticmethod
    def _take(path):
        """(faulthandler's "Fatal Python error" line, the dump's stacks without it and the
        module list), and the file is emptied (the next fatal signal writes it again)."""
        try:
            with open(path, "r+", errors="replace") as f:
                lines = f.read().strip().splitlines()
                f.truncate(0)
        except OSError:
            return "", ""
        fatal = next((line for line in lines if line.startswith("Fatal Python error")), "")
        return fatal, "\n".join(line for line in lines if not line.startswith(
            ("Fatal Python error", "Extension modules"))).strip()

    def enable_dump(self):
        """Point faulthandler at this worker's file (after Gunicorn installed its handlers)."""
        try:
            self.file = open(os.path.join(self.path, f"{self.pid}.stacks"), "w")
            faulthandler.enable(file=self.file, all_threads=True)
        except (OSError, ValueError, RuntimeError) as exc:
            self.log.warning("heartworker: no stack dump when C code holds the GIL: %s", exc)
            self.file = None
            return
        atexit.register(self.remove_dump, self.pid)

    def discard(self):
        """Python runs the abort: Gunicorn logs the readable traceback; drop the raw dump."""
        if self.file is not None:
            try:
                os.ftruncate(self.file.fileno(), 0)
            except OSError:
                pass

    def disable_dump(self):
        """heartworker aborts the worker itself and has logged the stack already."""
        faulthandler.disable()

    def remove_dump(self, pid):
        if os.getpid() == pid:
            _unlink(self.file.name)

    # -- startups past their cap ---------------------------------------------------
    def startup_failed(self):
        """Count one more startup past its cap; return how many in a row."""
        n = self._read_failures() + 1
        self._write_failures(n)
        return n

    def startup_began(self):
        """Mark this worker as starting (the next worker reads it if this one is killed)."""
        try:
            open(os.path.join(self.path, f"{self.pid}.startup"), "w").close()
        except OSError:
            pass

    def startup_done(self):
        _unlink(os.path.join(self.path, f"{self.pid}.startup"))
        if self._read_failures():
            self._write_failures(0)

    def _read_failures(self):
        try:
            with open(os.path.join(self.path, "startups-past-cap")) as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    def _write_failures(self, n):
        try:
            with open(os.path.join(self.path, "startups-past-cap"), "w") as f:
                f.write(str(n))
        except OSError:
            pass
