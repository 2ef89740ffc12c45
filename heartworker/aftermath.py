"""What a worker leaves for the workers after it: stacks it could not log, and failed startups.

Gunicorn's arbiter spawns every worker from the same process, so a directory
made there (lazily, by the worker class's ``__init__``, which runs in the
arbiter) is shared by all its workers.  It holds:

* ``<pid>-<token>.stacks``: each worker's ``faulthandler`` file.  faulthandler's
  C-level handler prints every thread's stack on SIGABRT even while C code
  holds the GIL, which is the only way to know where such a worker was when
  the arbiter killed it.  It writes here, not into the error log: when Python
  *can* run, Gunicorn's abort handler follows and logs a readable traceback,
  and :meth:`Aftermath.take_own` empties the raw dump so that the stacks are
  printed once; and a file of our own is never the one USR1 rotated away.
  A dump that is still there when its worker is gone was written by a worker
  that never ran Python again: the next worker to boot logs it through
  Gunicorn's logger (:meth:`Aftermath.collect`) and removes it.
* ``<pid>-<token>.startup``: there while the worker starts (it holds when it
  began), so that the dump of a worker killed then is logged as a startup past
  its deadline, and which one.
* ``startups-past-cap``: how many startups in a row ran past their cap, so
  that a startup cap that is too small for the app is named and counted
  instead of silently restarting forever.
"""

import atexit
import faulthandler
import fcntl
import os
import shutil
import tempfile
import time

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
    """One worker's side of the shared directory.

    Its files are named ``<pid>-<token>``: a new worker that gets the pid of
    a dead one does not take that one's files for its own.
    """

    def __init__(self, path, log):
        self.path = path
        self.log = log
        self.pid = os.getpid()
        self.stem = f"{self.pid}-{time.time_ns()}"
        self.file = None

    # -- stacks ------------------------------------------------------------------
    def collect(self, startup_note=None):
        """Log (then remove) the dumps of workers that died without running Python again.

        A worker that died so during its startup (its ``.startup`` file is
        still there) is logged at CRITICAL, with ``startup_note(elapsed)``: what
        to say of a startup killed ``elapsed`` seconds after it began (the
        setting to raise, the count of startups in a row past their cap), as the
        guard logs a startup it ends itself.  Each dump is claimed (renamed)
        before it is read, so that workers booting together log it once.
        """
        for name in sorted(os.listdir(self.path)):
            stem, _, ext = name.partition(".")
            pid = stem.partition("-")[0]
            if ext not in ("stacks", "startup") or not pid.isdigit() or stem == self.stem \
                    or int(pid) != self.pid and _alive(int(pid)):
                continue
            full = os.path.join(self.path, name)
            marker = os.path.join(self.path, f"{stem}.startup")
            if ext == "startup":
                if not os.path.exists(os.path.join(self.path, f"{stem}.stacks")):
                    _unlink(full)      # no dump (or claimed: its claimer has read this)
                continue
            began = _read_float(marker)    # (before the claim: see just above)
            claimed = f"{full}.{self.stem}"
            try:
                os.rename(full, claimed)
                died = os.stat(claimed).st_mtime
            except OSError:
                continue               # another worker claimed it
            fatal, dump = self._take(claimed)
            _unlink(claimed)
            _unlink(marker)
            if not dump:
                continue
            if "Aborted" not in fatal:     # a crash in C code: SIGSEGV, SIGBUS, SIGFPE, SIGILL
                self.log.error("heartworker: worker (pid %s) crashed (%s); its stacks then "
                               "(most recent call first):\n%s", pid, fatal, dump)
            elif began is not None and startup_note is not None:
                self.log.critical("heartworker: worker (pid %s) was killed during its startup, "
                                  "past its deadline, while no Python code could run (C code "
                                  "held the GIL)%s. Its stacks when it got SIGABRT (most "
                                  "recent call first):\n%s", pid, startup_note(died - began),
                                  dump)
            else:
                self.log.error("heartworker: worker (pid %s) was killed while no Python code "
                               "could run (C code held the GIL); its stacks when it got "
                               "SIGABRT (most recent call first):\n%s", pid, dump)

    def take_own(self):
        """This worker's own dump, emptied (Python runs its abort: it is logged now, or
        not at all if a readable traceback shows the same stacks)."""
        if self.file is None:
            return ""
        return self._take(self.file.name)[1]

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

    def enable_dump(self, all_threads):
        """Point faulthandler at this worker's file (after Gunicorn installed its handlers).

        ``all_threads``: dump every thread, not only the one the signal lands on.
        faulthandler walks the other threads' frames without the GIL, which is safe
        while C code holds it (the case the dump is for: nothing else runs) and can
        crash the worker when another thread runs Python meanwhile (the guard, while
        the arbiter aborts a worker whose serving thread runs Python: seen as
        SIGSEGV on Python 3.13).  So only the threaded worker, whose request threads
        are the ones that hold the GIL, takes that risk; the sync and gevent workers
        serve on the main thread, where the arbiter's SIGABRT lands (the guard
        blocks every signal), and dump that one."""
        try:
            self.file = open(os.path.join(self.path, f"{self.stem}.stacks"), "w")
            faulthandler.enable(file=self.file, all_threads=all_threads)
        except (OSError, ValueError, RuntimeError) as exc:
            self.log.warning("heartworker: no stack dump when C code holds the GIL: %s", exc)
            self.file = None
            return
        atexit.register(self.remove_dump, self.pid)

    def disable_dump(self):
        """heartworker aborts the worker itself and has logged the stack already."""
        faulthandler.disable()

    def remove_dump(self, pid):
        if os.getpid() == pid:
            _unlink(self.file.name)

    # -- startups past their cap ---------------------------------------------------
    def startup_began(self, began):
        """Mark this worker as starting since ``began`` (wall clock): read by the next
        worker if this one is killed before :meth:`startup_done`."""
        try:
            with open(os.path.join(self.path, f"{self.stem}.startup"), "w") as f:
                f.write(repr(began))
        except OSError:
            pass

    def startup_done(self):
        _unlink(os.path.join(self.path, f"{self.stem}.startup"))
        self._count(lambda n: 0)

    def startup_failed(self):
        """Count one more startup past its cap; return how many in a row."""
        return self._count(lambda n: n + 1)

    def _count(self, update):
        """Apply ``update`` to the count of startups in a row past their cap, under a lock
        shared by the arbiter's workers (several fail at once when they boot together);
        return the new count."""
        path = os.path.join(self.path, "startups-past-cap")
        try:
            lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            before = int(_read_float(path) or 0)
            after = update(before)
            if after != before:
                try:
                    with open(path + ".new", "w") as f:
                        f.write(str(after))
                    os.replace(path + ".new", path)    # never seen half-written
                except OSError:
                    pass
            return after
        finally:
            if lock is not None:
                os.close(lock)      # (releases the lock)


def _read_float(path):
    try:
        with open(path) as f:
            return float(f.read())
    except (OSError, ValueError):
        return None
