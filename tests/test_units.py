"""Unit tests of the pieces; the behaviour itself is tested against real Gunicorn elsewhere."""

import contextlib
import inspect
import math
import os
import sys
import threading
import time

import pytest
from gunicorn.config import Config
from gunicorn.workers.workertmp import WorkerTmp

from heartworker import long_section, native
from heartworker.deadline import Section
from heartworker.heartbeat import Heartbeat, check_protocol
from heartworker.registry import Registry
from heartworker.section import activate
from heartworker.settings import SECTION_CAP, STARTUP_CAP, SettingError, Settings, parse_seconds
from heartworker.vouching import vouch
from heartworker.startup import guard_tick


class RecordingHeartbeat:
    def __init__(self):
        self.writes = []

    def write(self, when):
        self.writes.append(when)

    def close(self):
        self.closed = True


def make_registry(owner=None, window=2.0, default_cap=60.0):
    return Registry(RecordingHeartbeat(), serving_tid=native.get_ident(),
                    default_cap=default_cap, window=window, owner=owner)


@pytest.fixture
def active():
    registries = []

    def make(**kw):
        reg = make_registry(**kw)
        activate(reg)
        registries.append(reg)
        return reg

    yield make
    activate(None)


@contextlib.contextmanager
def a_request_thread(reg, cap):
    """A thread of the threaded worker, inside a section of ``cap`` s of its request, until
    the ``with`` ends."""
    entered, leave = threading.Event(), threading.Event()

    def request_thread():
        request = reg.request_begins("GET /model", sys._getframe(), 2.0)
        section = reg.enter("inference", cap, sys._getframe())
        entered.set()
        leave.wait(10)
        reg.exit(section)
        reg.request_done(request, lambda: None)

    t = threading.Thread(target=request_thread)
    t.start()
    try:
        assert entered.wait(10)
        yield
    finally:
        leave.set()
        t.join(10)


# -- the rule -----------------------------------------------------------------
@pytest.mark.parametrize("standing,inside,loop_free,expected", [
    (None, True, True, 7.0),         # no section open: withdraw any vouch left standing
    (100.0, True, False, 100.0),     # section code running: the standing vouch
    (100.0, False, True, 100.0),     # loop free: keep the standing vouch
    (5.0, False, True, 10.0),        # ... but never less than now
    (100.0, False, False, 7.0),      # stuck outside sections: stock, last seen alive
])
def test_vouch_rule(standing, inside, loop_free, expected):
    assert vouch(10.0, standing, inside, loop_free, 7.0) == expected


def test_inside_a_past_deadline_the_guard_never_extends_the_vouch():
    assert vouch(now=50.0, standing=40.0, inside=True, loop_free=False, alive_at=45.0) == 40.0


# -- the registry ----------------------------------------------------------------
def test_outermost_section_writes_its_deadline_once_and_the_vouch_is_withdrawn_after():
    reg = make_registry()
    before = time.monotonic()
    s = reg.enter("a", 30.0, None)
    assert reg.heartbeat.writes == [s.deadline] and s.deadline >= before + 30
    reg.exit(s)
    assert reg.heartbeat.writes == [s.deadline], "leaving writes nothing"
    assert reg.standing is None and reg.open == 0 and not reg.heap and not reg.fresh
    ended = reg.alive_at
    reg.apply_rule(time.monotonic(), inside=False, loop_seen=None)    # the guard's next look
    assert reg.heartbeat.writes[-1] == ended and reg.written is None
    reg.apply_rule(time.monotonic(), inside=False, loop_seen=None)
    assert len(reg.heartbeat.writes) == 2, "then Gunicorn's heartbeat alone"


def test_back_to_back_sections_within_the_window_need_no_syscall():
    reg = make_registry(window=2.0)
    for _ in range(100):
        reg.exit(reg.enter("request", 30.0, None))
    assert len(reg.heartbeat.writes) == 1


def test_gunicorns_heartbeat_withdraws_a_vouch_left_standing():
    reg = make_registry()
    reg.exit(reg.enter("a", 30.0, None))
    reg.beat(lambda: None)            # after Gunicorn's notify() wrote "now"
    assert reg.written is None and len(reg.heartbeat.writes) == 1


def test_gunicorns_heartbeat_never_writes_below_a_standing_vouch():
    # Gunicorn's notify() writes "now": a thread that took the GIL for a long C call in
    # that write's syscall kept "now" instead of its section's vouch (found by the soak).
    reg = make_registry()
    section = reg.enter("a", 30.0, None)
    vouch = reg.heartbeat.writes[-1]
    notified = []
    reg.beat(lambda: notified.append(True))
    assert not notified and reg.heartbeat.writes[-1] >= vouch
    reg.exit(section)


def test_the_section_past_its_deadline_is_what_an_arbiters_abort_names():
    # The arbiter aborts a worker whose section passed its deadline while C code held
    # the GIL: its 504 named --timeout, not the section (found by the soak).
    reg = make_registry()
    here = sys._getframe()
    outer = reg.enter("outer", 30.0, here)
    inner = reg.enter("inner", 0.01, here)
    assert reg.past_deadline(here, inner.deadline + 0.001) is inner
    assert reg.past_deadline(here, inner.deadline - 0.001) is None
    assert reg.past_deadline(None, inner.deadline + 1) is None          # not its code
    reg.exit(inner)
    reg.exit(outer)


def test_an_arbiters_abort_past_an_enclosing_deadline_names_the_enclosing_section():
    # It named the inner section and its own cap ("cap 60 s" with 5 s elapsed).
    from heartworker.flavor import SyncFlavor
    from heartworker.guard import Guard
    reg = make_registry()
    guard = Guard(reg, SyncFlavor(), tick=0.5, ppid=os.getppid(), log=None)
    here = sys._getframe()
    outer = reg.enter("outer", 5.0, here)
    inner = reg.enter("inner", 60.0, here)
    now = outer.deadline + 0.5
    assert reg.past_deadline(here, now) is inner
    cause = guard.arbiter_cause(inner, now)
    assert "ran past the deadline of its enclosing section 'outer' (cap 5 s)" in cause, cause
    assert cause.endswith("while C code held the GIL"), cause
    inner.why = "section 'inner' ran past the deadline of its enclosing section 'outer'"
    cause = guard.arbiter_cause(inner, now)          # cancelled, still running
    assert cause.startswith(inner.why) and "the cancellation did not take" in cause, cause
    assert "enclosing section 'outer', cap 5 s" in guard.overdue_message(inner, now - 1, now)
    reg.exit(inner)
    reg.exit(outer)


def test_an_arbiters_abort_finds_a_request_threads_section_on_its_own_stack():
    from heartworker.threads import ThreadFlavor
    reg = make_registry(owner=ThreadFlavor.owner)
    with a_request_thread(reg, 0.01):
        now = time.monotonic() + 1
        main_frame = sys._getframe()
        assert reg.past_deadline(main_frame, now) is None, "not on the main thread's stack"
        late = reg.past_deadline(main_frame, now, ThreadFlavor.frames_at_abort())
        assert late is not None and late.name == "inference"


def test_nested_deadline_is_the_earliest_and_only_a_nearer_one_is_written():
    here = sys._getframe()
    reg = make_registry()
    outer = reg.enter("outer", 30.0, here)
    inner_long = reg.enter("inner", 300.0, here)
    assert inner_long.deadline == outer.deadline
    assert len(reg.heartbeat.writes) == 1, "same deadline: no syscall"
    reg.exit(inner_long)
    inner_short = reg.enter("short", 1.0, here)
    assert inner_short.deadline < outer.deadline
    assert reg.heartbeat.writes[-1] == inner_short.deadline
    reg.exit(inner_short)
    assert reg.heartbeat.writes[-1] == outer.deadline, "the enclosing deadline is restored"
    reg.exit(outer)


def test_concurrent_owners_keep_the_latest_deadline_and_write_rarely():
    owners = iter(range(10_000))
    current = [0]
    reg = make_registry(owner=lambda: current[0], window=2.0)
    first = reg.enter("g0", 10.0, None)
    current[0] = next(owners) + 1
    second = reg.enter("g1", 20.0, None)
    assert reg.standing == second.deadline
    n = len(reg.heartbeat.writes)
    for _ in range(50):            # deadlines within the window: no more writes
        current[0] = next(owners) + 2
        reg.exit(reg.enter("same", 20.0, None))
    assert len(reg.heartbeat.writes) == n
    reg.exit(second)
    assert reg.standing == first.deadline, "back to one owner: exact again"
    reg.exit(first)


def test_closed_sections_do_not_accumulate_in_the_heap():
    current = [0]
    reg = make_registry(owner=lambda: current[0])
    anchor = reg.enter("anchor", 600.0, None)
    for i in range(1, 5000):
        current[0] = i
        reg.exit(reg.enter("short-lived", 60.0, None))
    assert len(reg.heap) < 200
    current[0] = 0
    reg.exit(anchor)


def test_sections_of_other_threads_are_not_registered():
    reg = make_registry()
    result = []
    t = threading.Thread(target=lambda: result.append(reg.enter("bg", 10.0, None)))
    t.start()
    t.join()
    assert result == [None] and reg.open == 0 and not reg.heartbeat.writes


def test_graceful_limit_clips_every_deadline():
    reg = make_registry()
    s = reg.enter("a", 300.0, None)
    limit = time.monotonic() + 2
    reg.set_limit(limit)
    assert reg.standing == limit and reg.heartbeat.writes[-1] == limit
    assert reg.deadline_of(s) == limit
    reg.exit(s)


def test_disable_withdraws_the_vouch_and_stops_registering():
    reg = make_registry()
    s = reg.enter("a", 300.0, None)
    reg.disable()
    assert reg.heartbeat.writes[-1] == reg.alive_at and reg.standing is None
    assert reg.enter("b", 10.0, None) is None
    reg.exit(s)


def test_beat_restores_the_standing_vouch_over_gunicorns_notify():
    reg = make_registry()
    s = reg.enter("a", 300.0, None)
    reg.beat(lambda: None)
    assert reg.heartbeat.writes[-1] == s.deadline
    reg.exit(s)


def test_inside_walks_the_stack_for_an_entry_frame():
    reg = make_registry()
    here = sys._getframe()
    s = reg.enter("a", 30.0, here)

    def deeper():
        return reg.inside(sys._getframe()), reg.inside_section(sys._getframe(), s)

    assert deeper() == (True, True)
    reg.exit(s)
    assert deeper() == (False, False)


def test_apply_rule_pulls_back_to_the_last_sign_of_life():
    reg = make_registry()
    s = reg.enter("a", 300.0, None)
    alive = reg.alive_at
    reg.apply_rule(time.monotonic(), inside=False, loop_seen=None)
    assert reg.heartbeat.writes[-1] == alive
    reg.apply_rule(time.monotonic(), inside=True, loop_seen=None)
    assert reg.heartbeat.writes[-1] == s.deadline
    reg.exit(s)


def test_a_gil_hold_in_a_request_threads_section_that_silences_the_main_loop_keeps_the_vouch():
    # The threaded worker's guard looked at the main thread (Gunicorn's loop) only,
    # which never runs a section: a loop kept silent past LOOP_EVERY by a section's
    # GIL-holding call read as "stuck outside every section", and the guard wrote the
    # loop's last heartbeat, already past --timeout, over the standing vouch: the
    # arbiter killed the worker inside its section (found by benchmarks/soak.py).
    from heartworker.guard import Guard
    from heartworker.threads import LOOP_EVERY, ThreadFlavor
    reg = Registry(RecordingHeartbeat(), serving_tid=native.get_ident(), default_cap=60.0,
                   window=2.0, owner=ThreadFlavor.owner)
    flavor = ThreadFlavor()
    guard = Guard(reg, flavor, tick=0.5, ppid=os.getppid(), log=None)
    with a_request_thread(reg, 30.0):
        now = time.monotonic()
        flavor.beat_at = now - LOOP_EVERY - 1          # silent: a GIL hold just ended
        guard.step(now)
        assert reg.heartbeat.writes[-1] == reg.standing, "the standing vouch stands"
        flavor.beat_at = now = time.monotonic()       # the loop is seen: its own rule
        guard.step(now)
        assert reg.heartbeat.writes[-1] == max(now, reg.standing)


def test_a_frozen_serving_thread_costs_the_guard_one_lock_wait_not_one_per_step():
    # Every step waited LOCK_WAIT for the lock that the frozen thread holds, so each
    # deadline (the cap, then the grace's abort) was acted on up to 1 s late: a frozen
    # gevent worker's client got its 504 at cap + 3 s, not cap + 1 s (found when the
    # suite first ran in parallel).
    import logging

    from heartworker.flavor import SyncFlavor
    from heartworker.guard import Guard
    from heartworker.regions import LOCK_WAIT
    reg = make_registry()
    guard = Guard(reg, SyncFlavor(), tick=0.5, ppid=os.getppid(), log=logging.getLogger("t"))
    section = reg.enter("outer", 60.0, sys._getframe())
    frozen, thaw = threading.Event(), threading.Event()

    def frozen_in_an_update():          # holds the registry's lock, as a frozen region does
        with reg.lock:
            frozen.set()
            thaw.wait(30)

    threading.Thread(target=frozen_in_an_update, daemon=True).start()
    frozen.wait(5)
    try:
        started = time.monotonic()
        guard.step(started)
        assert guard.frozen and time.monotonic() - started >= LOCK_WAIT * 0.9, "found frozen"
        for _ in range(3):
            started = time.monotonic()
            guard.step(started)
            assert time.monotonic() - started < LOCK_WAIT / 4, "a later step only tries"
    finally:
        thaw.set()
    deadline = time.monotonic() + 5
    while guard.frozen and time.monotonic() < deadline:
        guard.step(time.monotonic())
    assert not guard.frozen, "a step that gets the lock again sees the thread thawed"
    reg.exit(section)


def test_a_waiting_greenlets_grace_begins_only_once_the_hub_ran_its_throw():
    # The hub runs its callbacks in order.  A probe posted before the throw could be
    # answered a moment before the throw ran; the guard, looking in between, took the
    # hub for free and the throw for not taken, and aborted the worker (found when the
    # suite first ran in parallel: a greenlet blocked the hub past the waiting one's grace).
    pytest.importorskip("gevent")
    from heartworker.ggevent import GeventFlavor

    class Loop:                 # the hub's loop, run by hand: callbacks in order
        def __init__(self):
            self.callbacks = []

        def run_callback_threadsafe(self, callback, *args):
            self.callbacks.append((callback, args))

        def run_one(self):
            callback, args = self.callbacks.pop(0)
            if callback.__name__ == "_answer":   # (a throw needs a greenlet: not run here)
                callback(*args)

    class Hub:
        loop = Loop()

    flavor = GeventFlavor(Hub())
    loop = Hub.loop
    waiting = make_registry().enter("upstream", 1.0, sys._getframe())   # any section
    step = time.monotonic()                     # a guard step's `now`, taken as it begins
    assert flavor.loop_seen(step) is not None   # hub free so far: a probe goes out
    flavor.interrupt(guard=None, section=waiting, running=False)   # at its cap: a throw
    assert flavor.loop_seen(step) is None       # the probe waits: the hub is blocked
    assert not flavor.escalates(waiting, running=False)
    loop.run_one()                              # the hub is free again: the probe first
    assert not flavor.escalates(waiting, running=False), "the throw has not run yet"
    # A step that began before that answer posts a probe behind the throw: the hub
    # has not answered it, whatever the clocks say.
    assert flavor.loop_seen(step) is not None
    assert not flavor.escalates(waiting, running=False), "the throw has not run yet"
    loop.run_one()                              # the throw (not delivered: mid-update)
    flavor.interrupt(guard=None, section=waiting, running=False)   # sent again (RESEND)
    assert not flavor.escalates(waiting, running=False)
    loop.run_one()                              # the probe after the first throw answered
    assert flavor.escalates(waiting, running=False), "the hub ran the throw: the grace is on"
    loop.run_one()
    flavor.interrupt(guard=None, section=waiting, running=False)
    assert flavor.escalates(waiting, running=False), "sent again: the grace goes on"


def test_a_cancellation_delivered_while_the_guard_looks_gets_its_grace():
    # Under gevent the hub delivers a waiting greenlet's exception on its own thread,
    # and the flavour says "escalate" once it is delivered.  The guard read `delivered`
    # before asking: a throw that landed in between got the worker aborted the moment
    # its exception was delivered (found when the suite first ran in parallel).
    import logging

    from heartworker.flavor import SyncFlavor
    from heartworker.guard import RESEND, Guard

    class DeliveredAsTheGuardLooks(SyncFlavor):
        def escalates(self, section, running):
            section.delivered = time.monotonic()      # the hub's throw, just now
            return True                               # (gevent: delivered, so yes)

    reg = make_registry()
    guard = Guard(reg, DeliveredAsTheGuardLooks(), tick=0.5, ppid=os.getppid(),
                  log=logging.getLogger("t"))
    escalated = []
    guard.escalate = lambda *args: escalated.append(args) or True
    section = reg.enter("upstream", 1.0, sys._getframe())
    section.why = "ran past its cap"
    now = time.monotonic()
    guard.overdue = [(now - 2.0, section)]            # its grace was over 2 s ago
    assert not guard.escalate_overdue(None, now) and not escalated
    # A grace over with no escalation (the hub still blocked): again in RESEND, not at once.
    section.delivered = False
    guard.flavor = SyncFlavor()
    guard.flavor.escalates = lambda section, running: False
    assert guard.next_look(now, None, math.inf, False) == now + RESEND
    reg.exit(section)


def test_gunicorns_heartbeat_inside_a_frozen_region_still_says_the_loop_is_alive():
    # Under gevent a greenlet frozen inside a region (a finalizer that never returns)
    # leaves the hub serving: Gunicorn's heartbeat, from another greenlet of the same
    # thread, finds the region busy and only notifies.  It left `alive_at` stale, and
    # the guard, finding the hub's probe late, wrote that over the fresh heartbeat.
    reg = make_registry()
    section = reg.enter("outer", 60.0, sys._getframe())
    notified = []
    before = reg.alive_at = time.monotonic() - 5.0
    with reg.region() as held:                  # the frozen greenlet's region
        assert held
        reg.beat(lambda: notified.append(time.monotonic()))   # the hub's main greenlet
    assert notified and reg.alive_at >= notified[0] - 0.1 > before
    reg.exit(section)


# -- long_section -----------------------------------------------------------------
def test_long_section_is_a_noop_outside_a_worker():
    with long_section("nothing") as s:
        assert s.name == "nothing"

    @long_section(cap=5)
    def f(x):
        return x * 2

    assert f(21) == 42 and f.__name__ == "f"


@pytest.mark.parametrize("cap,error", [(0, ValueError), (-1, ValueError), (math.nan, ValueError),
                                       (math.inf, ValueError), ("10", TypeError), (True, TypeError)])
def test_bad_caps_fail_where_they_are_written(cap, error):
    with pytest.raises(error):
        long_section("x", cap=cap)


def test_decorator_rejects_async_generators_and_names_must_be_strings():
    async def agen():
        yield

    async def coro(x: int) -> int:
        return x

    with pytest.raises(TypeError):
        long_section()(agen)
    decorated = long_section()(coro)
    assert inspect.iscoroutinefunction(decorated)
    assert inspect.signature(decorated) == inspect.signature(coro)
    with pytest.raises(TypeError):
        long_section(42)


def test_long_section_registers_in_the_active_registry(active):
    reg = active()
    with long_section("a", cap=5) as a:
        assert reg.open == 1
        with pytest.raises(RuntimeError):
            a.__enter__()
        with long_section("b"):
            assert reg.open == 2
    assert reg.open == 0


def test_decorated_function_gets_a_fresh_section_per_call(active):
    reg = active()
    seen = []

    @long_section("recursive", cap=5)
    def r(n):
        seen.append(reg.open)
        return r(n - 1) if n else 0

    r(3)
    assert seen == [1, 2, 3, 4] and reg.open == 0


def test_exception_closes_the_section(active):
    reg = active()
    with pytest.raises(ValueError):
        with long_section("boom"):
            raise ValueError
    assert reg.open == 0


# -- settings -------------------------------------------------------------------------
def test_settings_defaults_env_and_gunicorn_raw_env():
    assert Settings.load({}, {}) == Settings()
    s = Settings.load({SECTION_CAP: "12"}, {SECTION_CAP: "99", STARTUP_CAP: "7.5"})
    assert (s.section_cap, s.startup_cap) == (12.0, 7.5)


@pytest.mark.parametrize("raw", ["", "abc", "0", "-3", "nan", "inf", "-inf", "1e400"])
def test_invalid_setting_names_the_variable(raw):
    with pytest.raises(SettingError, match=SECTION_CAP):
        parse_seconds(SECTION_CAP, raw)


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), (" On ", True),
                                           ("true", True), ("0", False), ("off", False),
                                           ("", False)])
def test_keep_children_is_a_yes_or_a_no(raw, expected):
    assert Settings.load({"HEARTWORKER_KEEP_CHILDREN": raw}, {}).keep_children is expected
    assert Settings.load({}, {}).keep_children is False


def test_a_keep_children_that_is_neither_names_the_variable():
    with pytest.raises(SettingError, match="HEARTWORKER_KEEP_CHILDREN='maybe'"):
        Settings.load({"HEARTWORKER_KEEP_CHILDREN": "maybe"}, {})


def test_guard_tick():
    assert guard_tick(0) == 1.0 and guard_tick(30) == 1.0
    assert guard_tick(2) == 0.5 and guard_tick(0.1) == 0.05


# -- the heartbeat protocol ----------------------------------------------------------
def test_gunicorn_heartbeat_protocol_is_recognised():
    tmp = WorkerTmp(Config())
    try:
        assert check_protocol(tmp) is None
        ahead = time.monotonic() + 100
        Heartbeat(tmp).write(ahead)
        assert abs(tmp.last_update() - ahead) < 1e-3
    finally:
        tmp.close()


class OldWorkerTmp:
    """Gunicorn <= 21: a spinner in the file mode, read back as the ctime (wall clock)."""

    def __init__(self, path):
        self._f = open(path, "w+b")
        self.spinner = 0

    def notify(self):
        self.spinner = (self.spinner + 1) % 2
        os.fchmod(self._f.fileno(), self.spinner)

    def last_update(self):
        return os.fstat(self._f.fileno()).st_ctime

    def fileno(self):
        return self._f.fileno()


def test_an_unknown_heartbeat_protocol_is_detected(tmp_path):
    tmp = OldWorkerTmp(tmp_path / "hb")
    assert "time.monotonic()" in check_protocol(tmp)
    assert "changed shape" in check_protocol(object())


def test_graceful_limit_from_a_signal_handler_never_blocks_on_the_lock():
    reg = make_registry()
    s = reg.enter("a", 300.0, None)
    limit = time.monotonic() + 2
    with reg.region():                  # as if SIGTERM interrupted enter()/exit()
        reg.set_limit(limit)            # must not deadlock, nor touch the state mid-update
        assert reg.limit > limit
    reg.beat(lambda: None)                          # the next operation applies it
    assert reg.limit == limit and reg.standing == limit
    reg.exit(s)


# -- hardening (issue 8) ----------------------------------------------------------------
def test_a_finalizer_that_closes_a_section_mid_update_is_deferred_not_deadlocked(active):
    import gc
    reg = active()

    def opened_in_generator():
        with long_section("generator"):
            yield

    class Cycle:
        def __init__(self):
            self.me, self.gen = self, opened_in_generator()
            next(self.gen)

    Cycle()
    assert reg.open == 1
    write = reg.heartbeat.write

    def write_and_collect(when):      # a GC that starts at an allocation inside the update
        write(when)
        gc.collect()

    reg.heartbeat.write = write_and_collect
    with long_section("request", cap=1.0):      # a nearer deadline: written in the update
        pass
    assert reg.open == 0 and not reg.busy and not reg.deferred and not reg.stacks


def test_a_section_opened_by_a_finalizer_mid_update_vouches_for_nothing(active):
    reg = active()
    with reg.region():
        with long_section("from a finalizer") as s:
            assert reg.open == 0
        assert s._open is None
    with long_section("after") as s:
        assert reg.open == 1


# -- the quick region (the hot path takes no lock: regions.py) ---------------------------
def in_thread(function):
    """Run ``function`` in another thread; return (its result, seconds it took)."""
    out = {}

    def run():
        started = time.monotonic()
        out["result"] = function()
        out["took"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return out["result"], out["took"]


def held_region(reg, wait):
    with reg.region(wait) as held:
        return held


def test_another_threads_region_waits_for_the_serving_threads_quick_region():
    reg = make_registry()
    reg.serving_in = True                 # the serving thread, mid-way through a quick region
    held, took = in_thread(lambda: held_region(reg, 0.05))
    assert held is False and took >= 0.05, "not held while the quick region lasts"
    assert not reg.busy and not reg.lock._is_owned()
    threading.Timer(0.1, lambda: setattr(reg, "serving_in", False)).start()
    held, took = in_thread(lambda: held_region(reg, 5.0))
    assert held is True and 0.09 <= took < 2, "held once the quick region ended"


def test_another_threads_enter_and_exit_wait_for_the_serving_threads_quick_region():
    # A finalizer that the GC runs on another thread (the guard's, a request thread)
    # closes a section there: it must not update the books while the serving thread does.
    reg = make_registry(owner=lambda: "request")
    reg.tid = -1                          # every thread here is "another thread"
    reg.requests = {native.get_ident(): None}   # (one that may open sections)
    section = reg.enter("request", 30.0, None)
    reg.serving_in = True
    threading.Timer(0.1, lambda: setattr(reg, "serving_in", False)).start()
    started = time.monotonic()
    reg.exit(section)
    assert time.monotonic() - started >= 0.09 and reg.open == 0 and section.closed


def test_the_serving_thread_called_back_within_its_quick_region_gets_no_region():
    reg = make_registry()
    reg.serving_in = True                 # a finalizer or handler, mid-way through one
    started = time.monotonic()
    assert held_region(reg, -1) is False and time.monotonic() - started < 0.5
    assert reg.enter("from a finalizer", 30.0, None) is None, "vouches for nothing"
    s = Section(reg, "closed by a finalizer", 30.0, 0.0, None, None, 0.0)
    reg.exit(s)
    assert reg.deferred == [s], "closed when the quick region ends"
    reg.serving_in = False


def test_a_section_opened_while_another_region_runs_waits_for_it():
    reg = make_registry()
    inside, release = threading.Event(), threading.Event()

    def guard_region():
        with reg.region() as held:
            inside.set()
            release.wait(5)
            return held

    thread = threading.Thread(target=guard_region)
    thread.start()
    inside.wait(5)
    threading.Timer(0.1, release.set).start()
    started = time.monotonic()
    section = reg.enter("request", 30.0, None)
    assert section is not None and time.monotonic() - started >= 0.09 and reg.open == 1
    thread.join(5)
    reg.exit(section)
    assert reg.open == 0 and not reg.stacks


def test_the_hot_path_and_a_busy_guard_keep_the_books_straight():
    # The serving thread enters and leaves sections without the lock while another
    # thread keeps taking regions that read and rewrite the same state, as the guard does.
    reg = make_registry(window=0.5)
    stop, seen = threading.Event(), []

    def books():
        return reg.open, len(reg.stacks.get(None, ())), reg.standing

    def guard():
        while not stop.is_set():
            with reg.region(1.0) as held:
                if held:
                    before = books()
                    time.sleep(0.0002)        # (lets the serving thread run: it must wait)
                    reg.earliest()
                    reg.apply_rule(time.monotonic(), reg.inside(sys._getframe()), None)
                    seen.append(before == books() and before[0] == before[1])

    thread = threading.Thread(target=guard)
    thread.start()
    here = sys._getframe()
    try:
        for n in range(20000):
            outer = reg.enter("outer", 30.0, here)
            inner = reg.enter("inner", 1.0 + n % 3, here)
            reg.exit(inner)
            reg.exit(outer)
    finally:
        stop.set()
        thread.join(10)
    assert len(seen) > 10, "the guard's regions ran in between"
    assert all(seen), "never seen half-updated, nor changed within a region"
    assert reg.open == 0 and not reg.stacks and not reg.heap and not reg.fresh
    assert reg.standing is None and not reg.busy and not reg.serving_in


# Forking while another thread holds the lock is this test's point (Python 3.12+ warns of it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_vouches_and_never_waits_for_an_inherited_lock(active):
    reg = active()
    held, release = threading.Event(), threading.Event()

    def hold():                       # another thread is mid-update at the fork
        with reg.region():
            held.set()
            release.wait(10)

    with long_section("spans the fork"):
        t = threading.Thread(target=hold)
        t.start()
        held.wait(10)
        pid = os.fork()
        if pid == 0:                  # the child: nothing may write or wait
            try:
                with long_section("in the child", cap=1000):
                    pass
                ok = not reg.enabled and reg.heartbeat.closed
            finally:
                os._exit(0 if ok else 3)
        release.set()
        t.join()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert reg.enabled and reg.open == 0


def test_out_of_order_exits_never_leave_a_section_without_a_deadline():
    here = sys._getframe()
    reg = make_registry()
    outer = reg.enter("outer", 30.0, here)
    inner = reg.enter("inner", 300.0, here)
    assert inner.deadline == outer.deadline and not inner.in_heap and inner.bound is outer
    reg.exit(outer)
    assert reg.earliest() is inner and reg.open == 1
    reg.exit(inner)
    assert reg.open == 0


def test_entering_one_long_section_twice_raises_everywhere():
    s = long_section("once")
    with s:
        with pytest.raises(RuntimeError):
            s.__enter__()
    with s:                           # and it can be entered again once left
        pass


def test_a_long_section_is_its_first_entrys_record_and_a_later_entry_gets_a_fresh_one(active):
    from heartworker import LongSection
    reg = active()
    s = long_section("export")
    assert isinstance(s, LongSection) and s.cap is None
    with s:
        first = reg.stacks[None][-1]
        assert first is s and s.cap == reg.default_cap and not s.closed
    assert s.closed and s.frame is None
    first.why = "cancelled, as the guard leaves it"     # the guard may still hold it
    with s:
        second = reg.stacks[None][-1]
        assert second is not s and second.name == "export" and second.why is None
        assert s.closed and s.why, "the first record is left as it was"
    assert second.closed and s.why == "cancelled, as the guard leaves it"
    assert reg.open == 0 and not reg.stacks


def test_the_anchor_skips_helpers_to_the_frame_that_runs_the_with_body():
    import contextlib

    from heartworker.section import anchor

    seen = []

    class Probe:
        def __enter__(self):
            seen.append(anchor(sys._getframe(1)))

        def __exit__(self, *exc):
            pass

    class Wrapper:
        def __enter__(self):
            self.p = Probe()
            self.p.__enter__()

        def __exit__(self, *exc):
            pass

    @contextlib.contextmanager
    def helper():
        with Probe():
            yield

    here = sys._getframe()
    with Probe():
        pass
    with contextlib.ExitStack() as stack:
        stack.enter_context(Probe())
    with helper():
        pass
    with Wrapper():
        pass

    def gen():
        with Probe():
            yield

    for _ in gen():                   # a plain generator is its own anchor
        pass
    assert seen[:4] == [here] * 4
    assert seen[4] is not here and seen[4].f_code is gen.__code__


@pytest.mark.parametrize("cap", [1e19, 10 ** 400, 365 * 86400 + 1])
def test_caps_beyond_a_year_fail_where_they_are_written(cap):
    with pytest.raises(ValueError, match="one year"):
        long_section("x", cap=cap)
    assert long_section("x", cap=365 * 86400).cap == 365 * 86400


def test_the_heartbeat_file_holds_a_deadline_a_year_ahead():
    tmp = WorkerTmp(Config())
    try:
        assert check_protocol(tmp) is None
        ahead = time.monotonic() + 365 * 86400
        Heartbeat(tmp).write(ahead)
        assert abs(tmp.last_update() - ahead) < 1e-3
    finally:
        tmp.close()


def test_a_section_left_open_in_a_generator_does_not_clip_later_sections():
    reg = make_registry()

    def gen():
        yield reg.enter("fetch page", 1.0, sys._getframe())

    abandoned = next(gen())
    later = reg.enter("export", 600.0, sys._getframe())
    assert later.bound is None and later.deadline > abandoned.deadline + 500
    assert reg.innermost(abandoned) is abandoned, "the later section is not the one due"
    reg.exit(later)
    reg.exit(abandoned)


# -- progress and stall limits (issue 9) -------------------------------------------------
def test_progress_moves_the_stall_deadline_and_writes_at_most_once_per_window():
    reg = make_registry(window=2.0)
    s = reg.enter("load", 600.0, sys._getframe(), stall=5.0)
    assert reg.deadline_of(s) == s.stall_at == s.started + 5.0
    assert reg.heartbeat.writes == [s.stall_at], "the stall deadline is the standing vouch"
    for _ in range(1000):        # progress in a tight loop: the file already covers it
        reg.progress("tick")
    assert len(reg.heartbeat.writes) == 1 and s.note == "tick"
    assert s.stall_at > s.started + 5.0 and reg.standing == s.stall_at
    s.started -= 20.0            # as if the last progress were 10 s ago: now one write
    reg.progressed[None] = (time.monotonic() - 10.0, "tick")
    reg.standing = reg.written = s.stall_at
    reg.progress("later")
    assert len(reg.heartbeat.writes) == 2 and reg.heartbeat.writes[-1] == s.stall_at
    reg.exit(s)
    assert reg.stalls == 0


def test_sections_without_a_stall_limit_cost_no_write_on_progress():
    reg = make_registry()
    s = reg.enter("plain", 30.0, sys._getframe())
    reg.progress("x")
    assert reg.heartbeat.writes == [s.deadline] and s.note == "x" and s.stall_at == math.inf
    reg.exit(s)


def test_progress_counts_for_the_enclosing_sections_and_the_heap_refiles_them():
    here = sys._getframe()
    reg = make_registry()
    outer = reg.enter("job", 600.0, here, stall=2.0)
    inner = reg.enter("item", 60.0, here)
    assert reg.standing == outer.stall_at, "an enclosing stall bounds the standing vouch"
    first = outer.stall_at
    time.sleep(0.01)
    reg.progress("item 1")
    assert outer.stall_at > first and outer.note == inner.note == "item 1"
    assert reg.earliest() is outer and reg.heap[0][0] == outer.stall_at, "re-filed, not early"
    assert reg.innermost(outer) is inner, "a stall of the job ends the item it is in"
    reg.exit(inner)
    reg.exit(outer)


def test_progress_is_a_noop_outside_sections_workers_and_other_threads(active):
    import heartworker
    heartworker.progress("nothing open")            # no registry at all
    reg = active()
    heartworker.progress("no section open")
    with long_section("a", cap=5, stall=1) as a:
        t = threading.Thread(target=heartworker.progress, args=("another thread",))
        t.start()
        t.join()
        assert reg.stacks[None][0].note is None and not reg.progressed
        a.progress("mine")
        assert reg.stacks[None][0].note == "mine"
    a.progress("after")                             # a closed section: nothing
    assert reg.open == 0 and not reg.progressed, "forgotten with the owner's last section"


@pytest.mark.parametrize("kw,error", [(dict(stall=0), ValueError), (dict(stall=math.inf), ValueError),
                                      (dict(stall="1"), TypeError),
                                      (dict(cap=5, stall=6), ValueError)])
def test_bad_stall_limits_fail_where_they_are_written(kw, error):
    with pytest.raises(error, match="stall"):
        long_section("x", **kw)


def test_stall_and_report_settings():
    from heartworker.settings import REPORT_EVERY, STARTUP_STALL
    s = Settings.load({}, {})
    assert s.startup_stall is None and s.report_every == 60.0
    s = Settings.load({STARTUP_STALL: "30", REPORT_EVERY: "0"}, {})
    assert s.startup_stall == 30.0 and s.report_every == 0.0
    for env, name in [({STARTUP_STALL: "0"}, STARTUP_STALL), ({STARTUP_STALL: "x"}, STARTUP_STALL),
                      ({REPORT_EVERY: "-1"}, REPORT_EVERY), ({REPORT_EVERY: "nan"}, REPORT_EVERY),
                      ({REPORT_EVERY: "1e-6"}, REPORT_EVERY),
                      ({STARTUP_STALL: "1000", STARTUP_CAP: "100"}, STARTUP_STALL)]:
        with pytest.raises(SettingError, match=name):
            Settings.load(env, {})


def test_the_watch_reports_long_sections_oldest_first_and_counts_the_saved():
    from heartworker.report import REPORT_LINES, Watch, duration

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, msg, *args):
            self.lines.append(msg % args)

    class Title:
        shown = None

        def show(self, text):
            self.shown = text

    current = [0]
    reg = make_registry(owner=lambda: current[0])
    counted = []
    log, title = Log(), Title()
    watch = Watch(reg, log, every=60, window=2, count=counted.append, title=title)
    watch.enabled = True
    sections = []
    for i in range(REPORT_LINES + 3):
        current[0] = i
        sections.append(reg.enter(f"s{i}", 600.0, sys._getframe(), started=time.monotonic() - 100 + i))
    reg.progressed[0] = (time.monotonic() - 3, "shard 4/10")
    current[0] = 99
    young = reg.enter("young", 600.0, sys._getframe())
    now = time.monotonic()
    next_at = watch.look(now)
    assert log.lines == [], "nothing is logged in the region"
    watch.emit()
    assert len(log.lines) == REPORT_LINES + 1 and "and 3 more" in log.lines[-1]
    assert log.lines[0].startswith("heartworker: section 's0' running for 1m40s (cap 10m00s), "
                                   "last progress 'shard 4/10' 3.")
    assert title.shown.startswith("section 's0' 1m40s shard 4/10")
    assert next_at <= now + 1.0
    assert watch.look(now) and not watch.emit() and len(log.lines) == REPORT_LINES + 1, \
        "once per interval"
    current[0] = 0
    reg.exit(sections[0])
    sections[1].why = "cancelled"
    current[0] = 1
    reg.exit(sections[1])
    watch.look(time.monotonic())
    watch.emit()
    assert counted == ["heartworker.saved"], "ended on its own: saved; cancelled: not"
    for i, s in enumerate(sections[2:], 2):
        current[0] = i
        reg.exit(s)
    current[0] = 99
    reg.exit(young)
    watch.look(time.monotonic())
    watch.emit()
    assert title.shown is None and duration(3725) == "1h02m"


def test_the_next_worker_labels_each_dump_by_how_its_worker_died(tmp_path):
    import subprocess
    from heartworker.aftermath import Aftermath

    class Log:
        def __init__(self):
            self.lines = []

        def error(self, msg, *args):
            self.lines.append(("error", msg % args))

        def critical(self, msg, *args):
            self.lines.append(("critical", msg % args))

    dead = []
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        dead.append(f"{child.pid}-1")
    stack = 'Thread 0x1 (most recent call first):\n  File "app.py", line 3 in load'
    aborted = f"Fatal Python error: Aborted\n\n{stack}\n"
    (tmp_path / f"{dead[0]}.stacks").write_text(aborted)
    (tmp_path / f"{dead[1]}.stacks").write_text(aborted)
    os.utime(tmp_path / f"{dead[1]}.stacks", (1000.0, 1000.0))     # killed at 1000
    (tmp_path / f"{dead[1]}.startup").write_text("992.5")          # having begun at 992.5
    (tmp_path / f"{dead[2]}.stacks").write_text(
        f"Fatal Python error: Segmentation fault\n\n{stack}\nExtension modules: x\n")
    me = Aftermath(str(tmp_path), Log())
    (tmp_path / f"{me.stem}.startup").write_text("0")              # mine: not collected
    (tmp_path / f"{me.pid}-0.stacks").write_text(aborted)          # my pid's, another life
    me.collect(lambda elapsed: f" (after {elapsed:g} s)")
    by_pid = {pid: line for line in me.log.lines
              for pid in dead + [f"{me.pid}-0"] if f"(pid {pid.split('-')[0]})" in line[1]}
    assert by_pid[dead[0]][0] == "error" and "C code held the GIL" in by_pid[dead[0]][1]
    assert by_pid[dead[1]][0] == "critical" and "during its startup" in by_pid[dead[1]][1]
    assert "(after 7.5 s)" in by_pid[dead[1]][1]
    assert "crashed (Fatal Python error: Segmentation fault)" in by_pid[dead[2]][1]
    assert "C code held the GIL" in by_pid[f"{me.pid}-0"][1]
    assert all("line 3 in load" in line and "Extension modules" not in line
               for _, line in me.log.lines) and len(me.log.lines) == 4
    assert os.listdir(tmp_path) == [f"{me.stem}.startup"], "every file of a dead worker is gone"


def test_workers_that_boot_together_log_each_dump_once_and_count_every_failed_startup(tmp_path):
    import subprocess
    from concurrent.futures import ThreadPoolExecutor
    from heartworker.aftermath import Aftermath

    class Log:
        lines = []

        def error(self, msg, *args):
            self.lines.append(msg % args)

        critical = error

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    for i in range(20):           # dumps of dead workers
        (tmp_path / f"{child.pid}-{i}.stacks").write_text("Fatal Python error: Aborted\n\n0x1")
        (tmp_path / f"{child.pid}-{i}.startup").write_text("0")
    workers = [Aftermath(str(tmp_path), Log()) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda w: w.collect(lambda _: f" #{w.startup_failed()}"), workers))
    assert len(Log.lines) == 20, Log.lines
    assert sorted(int(line.split("#")[1].split(".")[0]) for line in Log.lines) == \
        list(range(1, 21))


def test_no_cancellation_lands_once_the_worker_is_being_aborted():
    # A pending cancellation could replace the abort's SystemExit as it unwinds: the 504
    # then named the cap instead of why the worker was aborted, and the exit looked clean.
    from heartworker.section import SectionCapExceeded
    from heartworker.worker import HeartWorkerMixin

    class Heart:
        cancel_waits, owner = False, None

        @staticmethod
        def interruptible(frame):
            return True

    class Guard:
        @staticmethod
        def take_cancellation(owner, frame):
            return "section 'x' ran past its cap"

    class Worker:
        abort_cause, heart, guard = None, Heart(), Guard()

    worker = Worker()
    with pytest.raises(SectionCapExceeded):            # due, and nothing else unwinds
        HeartWorkerMixin.land_cancellation(worker, sys._getframe())
    worker.abort_cause = "section 'x' is still running: the cancellation did not take"
    assert HeartWorkerMixin.land_cancellation(worker, sys._getframe()) is None


def test_every_module_of_the_registrys_bookkeeping_is_one_where_no_cancellation_lands():
    # A cancellation raised asynchronously is held back while the thread runs in these
    # modules (regions.in_bookkeeping): a module of the registry missing from the set
    # would let one land mid-update and leave a section open for good.
    from heartworker.deadline import Section
    from heartworker.regions import _BOOKKEEPING
    modules = {cls.__module__ for cls in Registry.__mro__ if cls is not object}
    assert modules | {Section.__module__} <= _BOOKKEEPING, modules - _BOOKKEEPING


def test_a_stopped_guard_finishes_the_line_it_is_logging_and_logs_no_more():
    # Under gevent the log handlers' locks are gevent's: the exiting worker's last lines,
    # waiting for one the guard held, got LoopExit (the soak, at a graceful limit).  The
    # worker now stops its guard before Gunicorn's last lines.
    import logging

    from heartworker.flavor import SyncFlavor
    from heartworker.guard import Guard
    from heartworker.report import Watch

    class Slow(logging.Handler):
        def __init__(self):
            super().__init__()
            self.began, self.ended = threading.Event(), []

        def emit(self, record):
            self.began.set()
            time.sleep(0.3)                     # a long line, a slow stream
            self.ended.append(time.monotonic())

    handler, log = Slow(), logging.getLogger("heartworker-test-stop")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    reg = make_registry()
    guard = Guard(reg, SyncFlavor(), tick=0.5, ppid=os.getppid(), log=log)
    guard.watch = Watch(reg, log, every=0.05, window=0, count=lambda *a: None)
    guard.watch.enabled = True
    section = reg.enter("reported", 60.0, sys._getframe())
    guard.start()
    try:
        assert handler.began.wait(10), "a report line"
        guard.stop(5.0)
        stopped = time.monotonic()
        assert handler.ended and handler.ended[-1] <= stopped, "the line it was logging ended"
        logged = len(handler.ended)
        time.sleep(0.4)                          # (a report line is due every 0.05 s)
        assert len(handler.ended) == logged, "nothing after the stop"
    finally:
        reg.exit(section)
        log.removeHandler(handler)


def test_a_guard_that_aborts_the_worker_is_not_waited_for_by_its_exit():
    # The guard's abort waits for the worker to exit (under gevent the exiting worker
    # answers the abort's client): an exit that waited for the guard answered nobody.
    from heartworker.flavor import SyncFlavor
    from heartworker.guard import Guard
    reg = make_registry()
    guard = Guard(reg, SyncFlavor(), tick=0.5, ppid=os.getppid(), log=None)
    guard._ended.acquire()               # as if its thread ran, in its abort's wait
    guard.aborting = True
    started = time.monotonic()
    guard.stop(5.0)
    assert time.monotonic() - started < 0.5
