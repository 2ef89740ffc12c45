"""The WSGI app the tests run under real Gunicorn.

Startup behaviour comes from the environment (it runs at import, inside
heartworker's startup section); requests are routed by path, with numbers in
the query string.  Function names matter: tests look for them in logged stacks.
"""

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from urllib.parse import parse_qs

import heartworker
from heartworker import long_section

from .gil import hold_gil


def hang_at_startup():
    while True:
        time.sleep(3600)


if os.environ.get("APP_STARTUP_SLEEP"):
    time.sleep(float(os.environ["APP_STARTUP_SLEEP"]))
if os.environ.get("APP_STARTUP_GIL"):
    hold_gil(float(os.environ["APP_STARTUP_GIL"]))
if os.environ.get("APP_STARTUP_HANG"):
    hang_at_startup()


def startup_phases(spec, hang_at=None):
    """Startup work in phases ("0.6,0.6,0.6" seconds each) that report progress after each."""
    for i, seconds in enumerate(spec.split(","), 1):
        if i == hang_at:
            hang_at_startup()
        time.sleep(float(seconds))
        heartworker.progress(f"phase {i} done")


if os.environ.get("APP_STARTUP_PHASES"):
    startup_phases(os.environ["APP_STARTUP_PHASES"], int(os.environ.get("APP_PHASE_HANG", 0)))


def stuck_in_section():
    while True:
        time.sleep(3600)


def read_that_never_returns():
    import socket
    a, b = socket.socketpair()        # nobody ever writes to b; no timeout
    try:
        a.recv(1)
    finally:
        a.close()
        b.close()


def hang_outside():
    while True:
        time.sleep(3600)


def busy_outside(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def background_section():
    with long_section("background", cap=120):
        time.sleep(60)


@long_section("decorated", cap=30)
def decorated(seconds):
    time.sleep(seconds)
    return b"decorated done"


def fanout(n, seconds):
    """n greenlets, each inside its own section (gevent worker only)."""
    import gevent

    def one():
        with long_section("fanout", cap=60):
            gevent.sleep(seconds)

    start = time.monotonic()
    gevent.joinall([gevent.spawn(one) for _ in range(n)], raise_error=True)
    return f"{n} sections in {time.monotonic() - start:.3f} s".encode()


# -- everyday Python around sections (issue 8) -------------------------------------
def opened_in_generator(cap):
    with long_section("generator", cap=cap):
        yield


ABANDONED = []


class Cycle:
    """Garbage only the cyclic GC frees, holding a generator suspended inside a section."""

    def __init__(self, cap):
        self.me = self
        self.gen = opened_in_generator(cap)
        next(self.gen)


def gc_churn(n):
    """Sections on the request path while the GC finalizes generators suspended in sections."""
    old = gc.get_threshold()
    gc.set_threshold(5, 2, 2)
    try:
        for _ in range(n):
            Cycle(60)
            with long_section("request", cap=60):
                pass
    finally:
        gc.set_threshold(*old)
    return b"churned"


def in_heartworker_update():
    """True while this thread is in the middle of heartworker's bookkeeping: a region, or
    a quick region (the serving thread's hot path, which takes no lock)."""
    registry = sys.modules["heartworker.section"]._active
    return registry.busy and registry.lock._is_owned() or registry.serving_in


def finalizer_that_never_returns():
    while True:
        time.sleep(3600)


def frozen_in_update(cap):
    """A signal handler that never returns, run in the middle of heartworker's update.

    Python runs signal handlers between any two bytecodes, heartworker's own
    included; so does a GC's finalizer, but where a collection starts cannot be
    aimed on every Python version, while a signal sent over and over lands
    inside an update soon (a loop of sections spends most of its time there).
    """
    import signal

    from heartworker import native     # a real OS thread and ident, under gevent too

    def handler(signum, frame):
        if in_heartworker_update():
            stop.append(True)
            signal.signal(number, signal.SIG_IGN)
            finalizer_that_never_returns()

    number = signal.SIGRTMIN + 9
    main, stop = native.get_ident(), []
    real_sleep = (sys.modules["gevent.monkey"].get_original("time", "sleep")
                  if "gevent.monkey" in sys.modules else time.sleep)
    signal.signal(number, handler)

    def sender():
        while not stop:
            real_sleep(0.002)
            signal.pthread_kill(main, number)

    native.start_new_thread(sender)
    try:
        with long_section("outer", cap=cap):
            end = time.monotonic() + cap / 2
            while time.monotonic() < end:
                with long_section("inner", cap=cap * 10):
                    pass
    finally:
        stop.append(True)
    return b"the handler never ran inside an update"


def cancelled_in_a_loop(cap, n):
    """Sections cancelled while they churn through heartworker's bookkeeping, caught outside."""
    from heartworker import SectionCapExceeded
    caught = 0
    for _ in range(n):
        try:
            with long_section("churning", cap=cap):
                while True:
                    with long_section("inner", cap=60):
                        pass
        except SectionCapExceeded:
            caught += 1
        time.sleep(0.05)                # outside every section: nothing may be raised here
    registry = sys.modules["heartworker.section"]._active
    return f"caught {caught}, open {registry.open}".encode()


def items_with_their_own_cap(outer_cap):
    """A per-item section inside the request's; an item that is cancelled is skipped."""
    from heartworker import SectionCapExceeded
    with long_section("request", cap=outer_cap):
        for _ in range(10):
            try:
                with long_section("item", cap=10):
                    time.sleep(1)
            except SectionCapExceeded:
                pass                    # skip the item: the request goes on, if it may


def fork_sections(seconds):
    """A forked child keeps entering sections while its parent hogs the CPU outside them."""
    pid = os.fork()
    if pid == 0:
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:      # no sleep: a gevent child must not yield to
                with long_section("child", cap=1000):   # its copy of the worker's own greenlets
                    busy_outside(0.05)
        finally:
            os._exit(0)
    busy_outside(seconds)
    os.waitpid(pid, 0)


@long_section("pool task", cap=1000)
def pool_task(seconds):
    time.sleep(seconds)
    return seconds


def fork_pool(seconds):
    """The parent waits (outside sections) for a fork-pool task that runs in a section."""
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pool.apply(pool_task, (seconds,))


def fork_child(seconds):
    """Fork a child that sleeps ``seconds`` (a real sleep, under gevent too); return its pid."""
    from heartworker import native
    pid = os.fork()
    if pid == 0:
        try:
            native.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def fork_pool_then_block(seconds):
    """Start a fork pool whose task runs ``seconds``, then block outside every section."""
    import multiprocessing
    pool = multiprocessing.get_context("fork").Pool(1)
    pool.apply_async(time.sleep, (seconds,))
    busy_outside(seconds)


class SlowToLockHandler(logging.Handler):
    """A log handler whose lock takes a while to take: a cancellation that lands while
    ``logging.Handler.handle`` takes it (after its ``acquire``, before its ``try``) would
    leave it held for good, and every later log line of the worker would wait for it."""

    def acquire(self):
        super().acquire()
        busy_outside(0.02)

    def emit(self, record):
        pass


LOGGER = logging.getLogger("tests.app.slow_lock")
LOGGER.addHandler(SlowToLockHandler())
LOGGER.propagate = False


def logging_in_section(cap):
    """A section that works and logs (most of its time in logging) until its cap cancels it."""
    with long_section("logging", cap=cap):
        while True:
            busy_outside(0.01)
            LOGGER.warning("still working")


def inner_outlives_outer(outer_cap):
    """An inner section left open in a generator, resumed after the outer `with` ended."""
    def inner():
        with long_section("inner", cap=60):
            yield
            stuck_in_section()

    with long_section("outer", cap=outer_cap):
        gen = inner()
        next(gen)
    next(gen)


def manual_out_of_order(outer_cap):
    outer, inner = long_section("outer", cap=outer_cap), long_section("inner", cap=60)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    stuck_in_section()


@contextlib.contextmanager
def my_long_io(cap):
    with long_section("helper", cap=cap):
        yield


class Wrapper:
    """A class-based context manager that enters a long_section in its own __enter__."""

    def __init__(self, cap):
        self.section = long_section("wrapped", cap=cap)

    def __enter__(self):
        self.section.__enter__()
        return self

    def __exit__(self, *exc):
        return self.section.__exit__(*exc)


def through_helper(kind, cap, work):
    if kind == "exitstack":
        with contextlib.ExitStack() as stack:
            stack.enter_context(long_section("stacked", cap=cap))
            work()
    elif kind == "contextmanager":
        with my_long_io(cap):
            work()
    elif kind == "class":
        with Wrapper(cap):
            work()
    else:
        raise ValueError(kind)


def steps_then_quiet(section, seconds, every, then, how):
    """Report progress every ``every`` s for ``seconds``; then go quiet: hang, or hold the GIL."""
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        time.sleep(every)
        i += 1
        if how == "module":
            heartworker.progress(f"step {i}")
        else:
            section.progress(f"step {i}")
    if then == "hang":
        stuck_in_section()
    elif then == "gil":
        hold_gil(60)
    elif then == "busy":
        busy_outside(60)               # (inside the section: Python code, no progress)


class Unprintable:
    def __str__(self):
        raise RuntimeError("no str for you")

    __repr__ = __str__


def chatty_section(seconds):
    """Logs (Gunicorn's logger), nests sections and reports progress, with odd notes."""
    import logging
    log = logging.getLogger("gunicorn.error")
    notes = ["nul \x00 byte", os.fsdecode(b"caf\xe9.bin"), Unprintable(), "x" * 10_000]
    end, i = time.monotonic() + seconds, 0
    with long_section("chatty", cap=60, stall=5):
        while time.monotonic() < end:
            log.info("app: step %d", i)
            with long_section("inner", cap=30):
                heartworker.progress(notes[i % len(notes)])
            i += 1
            time.sleep(0.01)


CONDITION = threading.Condition()


def busy_logging(seconds):
    """Python code that logs all the time: each record takes its handler's lock."""
    import logging

    class Quiet(logging.Handler):
        def emit(self, record):
            pass

    log = logging.getLogger("app.busy")
    if not log.handlers:
        log.addHandler(Quiet())
        log.propagate = False
        log.setLevel(logging.INFO)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        log.info("still busy")


def busy_with_a_condition(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with CONDITION:               # threading.Condition: a lock taken in Python code
            pass


def enter_twice(seconds):
    """One long_section object entered again while open: refused, and the first entry still counts."""
    section = long_section("once", cap=30)
    with section:
        try:
            section.__enter__()
            refused = "entered twice"
        except RuntimeError as exc:
            refused = str(exc)
        busy_outside(seconds)           # the first entry still vouches
    with section:                       # and the object can be entered again once left
        busy_outside(seconds)
    return refused.encode()


def deep(depth, work):
    if depth:
        return deep(depth - 1, work)
    work()


def route(path, q):
    s, cap, name = q("s", 0.0), q("cap", None), q("name", None, str)
    if path == "/pid":
        return str(os.getpid()).encode()
    if path == "/sleep":
        time.sleep(s)
    elif path == "/hang":
        hang_outside()
    elif path == "/busy":
        busy_outside(s)
    elif path == "/gil":
        hold_gil(s)
    elif path == "/section":
        with long_section(name or "request", cap=cap):
            time.sleep(s)
    elif path == "/progress":
        with long_section(name or "steps", cap=cap, stall=q("stall", None)) as section:
            steps_then_quiet(section, s, q("every", 0.5), q("then", "", str), q("how", "", str))
    elif path == "/progress_nested":
        with long_section(name or "job", cap=cap, stall=q("stall", None)):
            for i in range(int(q("n", 3))):
                with long_section(f"item {i}", cap=cap) as item:
                    steps_then_quiet(item, s, q("every", 0.5), "", "module")
            stuck_in_section()
    elif path == "/busy_logging":
        busy_logging(s)
    elif path == "/busy_with_a_condition":
        busy_with_a_condition(s)
    elif path == "/condition_free":
        with CONDITION:
            return b"the condition's lock is free"
    elif path == "/big_body":
        return b"x" * int(q("mb", 20) * 1024 * 1024)
    elif path == "/chatty_section":
        chatty_section(s)
    elif path == "/section_busy":
        with long_section(name or "busy", cap=cap, cancel=bool(q("cancel", 1))):
            busy_outside(s)
    elif path == "/section_busy_yielding":     # CPU in 0.1 s slices, yielding between them
        with long_section(name or "busy", cap=cap):
            for _ in range(int(s / 0.1)):
                busy_outside(0.1)
                time.sleep(0)
    elif path == "/section_gil":
        with long_section(name or "gil", cap=cap):
            hold_gil(s)
    elif path == "/section_gil_again":         # C calls holding the GIL, back to back
        with long_section(name or "gil", cap=cap):
            for _ in range(int(q("n", 4))):
                hold_gil(s)
    elif path == "/section_sleep_then_gil":
        with long_section(name or "load", cap=cap):
            time.sleep(s)
            hold_gil(q("gil", 30.0))
    elif path == "/section_hang":
        with long_section(name or "stuck", cap=cap, cancel=bool(q("cancel", 1))):
            stuck_in_section()
    elif path == "/section_churn":
        with long_section("churning", cap=cap):
            while True:                 # most of the time inside heartworker's own updates
                with long_section("inner", cap=60):
                    pass
    elif path == "/cancelled_in_a_loop":
        return cancelled_in_a_loop(cap, int(q("n", 20)))
    elif path == "/items_with_their_own_cap":
        items_with_their_own_cap(cap)
    elif path == "/section_recv":
        with long_section(name or "upstream read", cap=cap):
            read_that_never_returns()
    elif path == "/section_stubborn":
        with long_section(name or "stubborn", cap=cap):
            try:
                stuck_in_section()
            except BaseException:       # swallows the cancellation and carries on
                stuck_in_section()
    elif path == "/section_stubborn_gil":
        with long_section(name or "stubborn", cap=cap):
            try:
                stuck_in_section()
            except BaseException:       # swallows the cancellation, then holds the GIL
                hold_gil(q("gil", 30.0))
    elif path == "/gil_then_sleep":            # C code holding the GIL, then a wait
        hold_gil(s)
        time.sleep(q("then", 30.0))
    elif path == "/section_then_hang":
        with long_section("before hang", cap=cap):
            time.sleep(s)
        hang_outside()
    elif path == "/bg_section_then_hang":
        threading.Thread(target=background_section, daemon=True).start()
        time.sleep(0.2)
        if q("then", "", str) == "busy":
            busy_outside(60)
        hang_outside()
    elif path == "/nested":
        with long_section("outer", cap=q("outer", 30.0)):
            time.sleep(s)
            with long_section("inner", cap=q("inner", 30.0)):
                time.sleep(q("inner_s", 0.0))
            time.sleep(s)
    elif path == "/nested_busy":       # (Python code: a request thread can be cancelled there)
        with long_section("outer", cap=q("outer", 30.0)):
            with long_section("inner", cap=q("inner", 30.0)):
                busy_outside(q("inner_s", 0.0))
    elif path == "/error_in_section":
        with long_section("failing", cap=cap):
            raise ValueError("boom inside a section")
    elif path == "/gc_churn":
        return gc_churn(int(q("n", 2000)))
    elif path == "/frozen_in_update":
        return frozen_in_update(q("cap", 3.0))
    elif path == "/fork_sections":
        fork_sections(s)
    elif path == "/fork_pool":
        fork_pool(s)
    elif path == "/fork_child":
        return str(fork_child(s)).encode()
    elif path == "/spawn_detached":
        import subprocess
        program = subprocess.Popen(["sleep", str(s)], preexec_fn=os.setsid)
        return str(program.pid).encode()
    elif path == "/logging_in_section":
        logging_in_section(cap)
    elif path == "/log":
        LOGGER.warning("one line")
        return b"logged"
    elif path == "/fork_child_then_wait":
        fork_child(s)
        time.sleep(s)                   # (under gevent: a greenlet that waits)
    elif path == "/fork_pool_then_block":
        fork_pool_then_block(s)
    elif path == "/abandon_generator":
        gen = opened_in_generator(cap)
        next(gen)                       # suspended inside its section, and kept
        ABANDONED.append(gen)
    elif path == "/abandon_generator_and_linger":     # the worker's exit then hangs
        threading.Thread(target=time.sleep, args=(3600,)).start()    # (not a daemon)
        gen = opened_in_generator(cap)
        next(gen)
        ABANDONED.append(gen)
    elif path == "/dormant_inner_live_outer":
        with long_section("outer", cap=cap):
            gen = opened_in_generator(60)
            next(gen)                   # an inner section, clipped to outer's, then dormant
            stuck_in_section()
    elif path == "/inner_outlives_outer":
        inner_outlives_outer(q("outer", 2.0))
    elif path == "/manual_out_of_order":
        manual_out_of_order(q("outer", 2.0))
    elif path == "/helper":
        work = (lambda: busy_outside(s)) if q("busy", 0) else (lambda: time.sleep(s))
        through_helper(q("kind", "", str), q("cap", 30.0), work)
    elif path == "/deep_section":
        depth = int(q("depth", 1500))
        sys.setrecursionlimit(max(sys.getrecursionlimit(), depth + 500))
        with long_section("deep", cap=q("cap", 30.0)):
            deep(depth, lambda: busy_outside(s))
    elif path == "/fanout":
        return fanout(int(q("n", 100)), s)
    elif path == "/decorated":
        return decorated(s)
    elif path == "/enter_twice":
        return enter_twice(s)
    else:
        return None
    return b"done"


def stream_then_hang(start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk\n"
    hang_outside()


def stream_then_stuck_in_section(start_response, cap):
    with long_section("streaming", cap=cap):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first chunk\n"
        stuck_in_section()


def stream_busy(start_response, chunks, seconds):
    """A body made by CPU work between its chunks (outside every section of the app's)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(chunks):
        busy_outside(seconds)
        yield b"chunk %d\n" % i


def big_then_wait(start_response, megabytes, seconds):
    """A big first chunk (a slow client keeps Gunicorn sending it), then the app waits."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"x" * int(megabytes * 1024 * 1024)
    time.sleep(seconds)
    yield b"end\n"


class LoggedBody:
    """A body of ``megabytes`` whose close() logs that it began and that it finished."""

    def __init__(self, megabytes):
        self.chunks = [b"x" * 65536] * int(megabytes * 16)

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        log = logging.getLogger("gunicorn.error")
        log.info("app: close begins")
        time.sleep(0.05)
        log.info("app: close done")


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return LoggedBody(float(query["mb"][0]))
    if environ.get("PATH_INFO") == "/stream_busy":
        return stream_busy(start_response, int(query["n"][0]), float(query["s"][0]))
    if environ.get("PATH_INFO") == "/big_then_wait":
        return big_then_wait(start_response, float(query["mb"][0]), float(query["s"][0]))
    if environ.get("PATH_INFO") == "/read_body_then_sleep":
        data = environ["wsgi.input"].read()
        time.sleep(float(query["s"][0]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"got %d\n" % len(data)]
    if environ.get("PATH_INFO") == "/stream_then_hang":
        return stream_then_hang(start_response)
    if environ.get("PATH_INFO") == "/stream_section":
        return stream_then_stuck_in_section(start_response, float(query["cap"][0]))

    def q(key, default, kind=float):
        return kind(query[key][0]) if key in query else default

    body = route(environ.get("PATH_INFO", "/"), q)
    if body is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route"]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
