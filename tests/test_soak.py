"""The soak, short (``benchmarks/soak.py --quick``): a minute of mixed traffic and faults.

Every answer is checked by the soak itself against docs/semantics.md
(``benchmarks/soak_rules.py``); here, that it found nothing unexpected, no
leak and no process left behind, and that it really ran every kind of request
and fault (it says so, and fails, when one never happened).
"""

import os
import re
import subprocess
import sys

import pytest

from tests.gunicorn_server import ROOT

pytest.importorskip("gevent", reason="the soak runs the gevent worker too")


@pytest.mark.quiet     # (its bounds: a cancellation's 504 within 1 s of the cap, and more)
def test_a_quick_soak_finds_nothing_unexpected():
    done = subprocess.run([sys.executable, os.path.join("benchmarks", "soak.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    m = re.match(r"soak: (\d+) requests, (\d+) unexpected, (\d+) workers ended, (\d+) leaks, "
                 r"(\d+) processes left behind", summary)
    assert m, out
    requests, unexpected, replaced, leaks, left = map(int, m.groups())
    assert (unexpected, leaks, left) == (0, 0, 0), out
    assert done.returncode == 0, out
    assert requests >= 10_000 and replaced > 0, out     # the load: 10,000 a minute


# -- the soak's own judgement, checked without a server ------------------------------------

@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import soak
        yield soak
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def test_a_steady_leak_is_found_and_a_swing_is_not(soak):
    assert soak.grew_for_good([10 + n for n in range(12)], band=2)        # one fd per sample
    assert not soak.grew_for_good([10, 14, 11, 15, 10, 14, 11, 15, 10, 14, 11, 15], band=5)
    assert not soak.grew_for_good([10, 11, 30, 31, 30], band=2), "five samples say nothing"


def test_a_slow_leak_of_a_steady_process_is_found_by_its_growth_per_hour(soak):
    def samples(fds, rss=20000, every=5.0, n=40):   # 200 s, as a 10-minute run's phase
        return [(t * every, rss(t) if callable(rss) else rss, fds(t), 3) for t in range(n)]
    slow = samples(lambda t: 10 + t // 12)          # one fd a minute: the thirds miss it
    assert not soak.leaks_of("w", slow, fd_band=2, thread_band=1)
    assert soak.leaks_of("w", slow, fd_band=2, thread_band=1, steady=True)
    swing = samples(lambda t: 10 + t % 2)           # a connection in flight or not
    assert not soak.leaks_of("w", swing, fd_band=2, thread_band=1, steady=True)
    warming = samples(lambda t: 10, rss=lambda t: 20000 + 4000 * min(t, 3))   # imports
    assert not soak.leaks_of("w", warming, fd_band=2, thread_band=1, steady=True)
    once = samples(lambda t: 10 + (t >= 20))        # one fd opened once, mid-run
    assert not soak.leaks_of("w", once, fd_band=2, thread_band=1, steady=True)
    short = samples(lambda t: 10 + t // 2, n=12)    # 60 s, warm-up included: no slope
    assert soak.leaks_of("w", short, fd_band=2, thread_band=1) == \
        soak.leaks_of("w", short, fd_band=2, thread_band=1, steady=True)


class Stalls:
    """A machine's stops, as ``soak.Starvation`` gives them: [(woke, seconds late)]."""

    def __init__(self, late):
        self.late = late

    def during(self, since, until):
        return sum(min(w, until) - max(w - s, since) for w, s in self.late
                   if w > since and w - s < until)


def phase_with(soak, flavor, faults=(), results=(), died=None, log="", alive=()):
    phase = soak.Phase(flavor, results=list(results), faults=list(faults), log=log)
    phase.booted = list(died or {}) + list(alive)
    phase.died = dict(died or {})
    phase.alive_at_end = set(alive)
    return phase


def test_a_death_is_explained_only_by_a_cause_just_before_it_of_the_right_kind(soak):
    kill = soak.Fault(at=10.0, name="KILL", target=7)
    sigkilled = "Worker (pid:7) was sent SIGKILL!"
    for died, log, explained in [(10.3, sigkilled, True),
                                 (14.0, sigkilled, False),     # long after the fault
                                 (9.0, sigkilled, False),      # before it
                                 (10.3, "", False)]:           # exited by itself
        phase = phase_with(soak, "sync", faults=[kill], died={7: died}, log=log)
        soak.explain_deaths(phase, {})
        assert (not phase.unexpected) == explained, (died, log)
    hup = soak.Fault(at=10.0, name="HUP", workers=(7,))
    stuck = soak.Result("cap_wait", "s", start=9.5, end=11.0, outcome="closed")
    stuck.began = 9.5
    aborted = "WORKER TIMEOUT (pid:7)\n" + sigkilled
    for log, running, explained in [
            (sigkilled, [stuck], False),     # the soak's SIGKILL, not the HUP
            ("", [], True),                  # a graceful stop
            # the stop outlasted --timeout (Gunicorn's graceful wait does not notify), and
            # a thread stuck in a syscall kept the abort from ending it ...
            (aborted, [stuck], True),
            (aborted, [], False)]:           # ... but nothing kept this one
        phase = phase_with(soak, "gthread", faults=[hup], results=running, died={7: 11.0},
                           log=log)
        soak.explain_deaths(phase, {"s": 7})
        assert (not phase.unexpected) == explained, (log, running)


def hang(soak, end, outcome="504"):
    body = "Gateway Timeout: the request ran longer than --timeout (2 s)"
    return soak.Result("hang_busy", "r1", start=0.0, end=end, outcome=outcome, body=body)


def test_a_graceful_stop_may_wait_for_c_code_that_holds_the_gil(soak):
    ttou = soak.Fault(at=10.0, name="TTOU", target=7)
    for held_until, explained in [(16.0, True), (None, False)]:
        holds = [] if held_until is None else [
            soak.Result("gil_cap", "g", start=8.0, end=held_until, outcome="504")]
        phase = phase_with(soak, "gthread", faults=[ttou], results=holds, died={7: 16.2})
        soak.explain_deaths(phase, {"g": 7})
        assert (not phase.unexpected) == explained, held_until


def test_a_request_explains_its_workers_death_only_around_its_own_end_and_as_it_ends_one(soak):
    aborted = "WORKER TIMEOUT (pid:7)\n"        # then an exit with code 0, as stock's sync worker
    for end, log, explained in [(2.1, aborted, True), (1.8, aborted, True),
                                (30.0, aborted, False),
                                (2.1, aborted + "Worker (pid:7) was sent SIGSEGV!", False),
                                (2.1, "Worker (pid:7) exited with code 1.", False),  # the guard
                                (2.1, "", False)]:            # exited by itself
        phase = phase_with(soak, "sync", results=[hang(soak, end)], died={7: 2.2}, log=log)
        soak.judge(phase, {"r1": 7}, {"r1": 0.0})
        assert (not phase.unexpected) == explained, (end, log)


def test_a_request_whose_end_takes_its_worker_must_take_it(soak):
    phase = phase_with(soak, "sync", results=[hang(soak, 2.1)], alive=[7])
    soak.judge(phase, {"r1": 7}, {"r1": 0.0})
    assert [why for why, _ in phase.unexpected if "lived on" in why], phase.unexpected


def test_a_hang_closed_by_a_faults_sigkill_is_collateral(soak):
    kill = soak.Fault(at=2.0, name="KILL", target=7)
    phase = phase_with(soak, "sync", faults=[kill], results=[hang(soak, 2.1, "closed")],
                       died={7: 2.2}, log="Worker (pid:7) was sent SIGKILL!")
    soak.judge(phase, {"r1": 7}, {"r1": 0.0})
    assert not phase.unexpected and phase.results[0].verdict == "collateral"


def test_a_connection_closed_by_the_arbiters_sigkill_needs_its_second_look(soak):
    killed = ("WORKER TIMEOUT (pid:7)\nWORKER TIMEOUT (pid:8)\n"
              "Worker (pid:7) was sent SIGKILL!\nWorker (pid:8) exited with code 1.")
    for other_died, sentinel, explained in [(2.15, (), True), (0.5, (), False),
                                            (None, (), False),
                                            (2.15, (8,), False)]:   # another arbiter's worker
        died = {7: 2.2} if other_died is None else {7: 2.2, 8: other_died}
        other = soak.Result("hang_busy", "r2", start=0.0, end=other_died or 0, outcome="504",
                            body="Gateway Timeout: the request ran longer than --timeout (2 s)")
        phase = phase_with(soak, "sync", results=[hang(soak, 2.2, "closed"), other],
                           died=died, log=killed)
        phase.sentinel = set(sentinel)
        soak.judge(phase, {"r1": 7, "r2": 8}, {"r1": 0.0, "r2": 0.0})
        unexpected = [why for why, _ in phase.unexpected if "second look" in why]
        assert (not unexpected) == explained, (other_died, sentinel)


def test_collateral_needs_a_death_while_the_request_ran_and_never_excuses_a_wrong_200(soak):
    kill = soak.Fault(at=5.0, name="KILL", target=7)
    log = "Worker (pid:7) was sent SIGKILL!"
    for outcome, kind, end, excused in [("closed", "long", 5.1, True),
                                        ("closed", "long", 20.0, False),
                                        ("200", "cap_busy", 5.1, False),
                                        ("500", "long", 5.1, False)]:
        r = soak.Result(kind, "r1", start=1.0, end=end, outcome=outcome)
        phase = phase_with(soak, "sync", faults=[kill], results=[r], died={7: 5.1}, log=log)
        soak.judge(phase, {"r1": 7}, {"r1": 1.0})
        assert (r.verdict == "collateral") == excused, (outcome, kind, end)


def test_a_neighbour_that_blocks_the_hub_delays_a_cancellation_by_its_overlap_only(soak):
    def judged(blocker_end, end):
        waiting = soak.Result("cap_wait", "w", start=0.0, end=end, outcome="504",
                              body="section 'soak cap_wait' ran past its cap: 2.00 s elapsed, cap 2 s")
        blocker = soak.Result("cpu", "b", start=0.5, end=blocker_end, outcome="200")
        phase = phase_with(soak, "gevent", results=[waiting, blocker])
        soak.judge(phase, {"w": 7, "b": 7}, {"w": 0.0, "b": 0.5})
        return waiting.verdict == "expected"
    assert judged(blocker_end=3.0, end=3.3)
    assert not judged(blocker_end=3.0, end=6.0), "later than the block explains"
    assert not judged(blocker_end=0.6, end=3.5)


def test_a_section_stopped_by_neighbours_past_its_cap_may_be_cancelled_at_it(soak):
    body = "section 'soak long' ran past its cap: 11.6 s elapsed, cap 10 s"
    rules = soak.rules
    assert rules.verdict("long", "gevent", "504", 11.7, 11.7, body, blocked=8.0)
    assert not rules.verdict("long", "gevent", "504", 11.7, 11.7, body, blocked=0.5)
    assert not rules.verdict("long", "sync", "504", 11.7, 11.7, body)


def test_a_graceful_stop_closes_only_what_outlived_its_graceful_timeout(soak):
    hup = soak.Fault(at=10.0, name="HUP", workers=(7,))
    grace = soak.rules.GRACEFUL
    for flavor, died, excused in [("gevent", 10.5, False), ("gevent", 10.0 + grace + 0.3, True),
                                  # the sync worker answers its one request's section (504)
                                  ("sync", 10.0 + grace + 0.3, False)]:
        r = soak.Result("long", "r1", start=9.0, end=died, outcome="closed")
        phase = phase_with(soak, flavor, faults=[hup], results=[r], died={7: died})
        soak.judge(phase, {"r1": 7}, {"r1": 9.0})
        assert (r.verdict == "collateral") == excused, (flavor, died)


def test_exits_during_a_hups_reload_make_a_second_look_as_it_ends(soak):
    # Gunicorn 27's reload waits up to --graceful-timeout for the old workers without
    # looking; the exits it saw are handled as it ends, right after its SIGABRT.
    killed = "WORKER TIMEOUT (pid:7)\nWorker (pid:7) was sent SIGKILL!"
    for hup_at, other_left, began, explained in [
            (0.2, 1.0, 0.0, True),            # 8 left at 1.0, during the reload
            (None, 1.0, 0.0, False),
            (1.5, 1.0, 0.0, False),           # 8 left before the HUP
            (0.2, None, 0.0, False),          # nothing left during the reload
            (0.2, 1.0, -2.5, True),           # 7 stale just before the HUP: maybe not seen
            (0.2, 1.0, -3.5, False)]:         # 7 was stale, so aborted, before the HUP
        faults = [] if hup_at is None else [soak.Fault(hup_at, "HUP", workers=(7, 8))]
        died = {7: 2.3} if other_left is None else {7: 2.3, 8: other_left}
        phase = phase_with(soak, "sync", faults=faults, results=[hang(soak, 2.3, "closed")],
                           died=died, log=killed)
        soak.judge(phase, {"r1": 7}, {"r1": began})
        unexpected = [why for why, _ in phase.unexpected if "second look" in why]
        assert (not unexpected) == explained, (hup_at, other_left, began)


def test_a_graceful_stop_excuses_its_504_when_something_else_ended_the_worker(soak):
    # A HUP stops the worker and its section ends at the graceful limit, before the
    # arbiter's abort for a neighbour outside sections ends the worker (gevent).
    graceful = "Gateway Timeout: section 'soak long' ran past the graceful timeout after SIGTERM"
    aborted = "WORKER TIMEOUT (pid:7)\nWorker (pid:7) exited with code 1."
    for faults, excused in [
            ([soak.Fault(10.0, "HUP", workers=(7,))], True),
            ([soak.Fault(10.0, "TERM", target=7, workers=(7, 8))], True),
            ([soak.Fault(10.0, "TTOU", workers=(7, 8), oldest=(7,))], True),
            ([], False),
            ([soak.Fault(10.0, "HUP", workers=(8,))], False),     # not aimed at it
            ([soak.Fault(10.0, "TERM", target=8, workers=(7, 8))], False),
            ([soak.Fault(10.0, "TTOU", workers=(7, 8), oldest=(7, 8))], False),   # maybe 8
            ([soak.Fault(12.5, "HUP", workers=(7,))], False)]:    # after its death
        r = soak.Result("long", "r1", start=9.0, end=11.9, outcome="504", body=graceful)
        neighbour = soak.Result("hang_busy", "r2", start=9.9, end=12.0, outcome="504",
                                body="Gateway Timeout: the request ran longer than --timeout")
        phase = phase_with(soak, "gevent", faults=faults, results=[r, neighbour],
                           died={7: 12.1}, log=aborted)
        soak.judge(phase, {"r1": 7, "r2": 7}, {"r1": 9.0, "r2": 9.9})
        assert neighbour.verdict == "expected", neighbour.verdict
        assert (r.verdict == "collateral") == excused, faults


def test_a_504_owed_by_a_hang_is_looked_for_among_the_requests_no_death_of_another_cause_ended(soak):
    def phase_of(*outcomes):
        results = [soak.Result("hang_busy", f"r{n}", 0.0, outcome=outcome, verdict=verdict)
                   for n, (outcome, verdict) in enumerate(outcomes)]
        return phase_with(soak, "sync", results=results)

    def missing(phase):
        return "a 504 for hang_busy" in soak.never_happened(phase)

    few = soak.OWED_A_504_FROM - 1       # (all of them closed by chance: says nothing)
    closed, collateral = ("closed", "expected"), ("closed", "collateral")
    assert not missing(phase_of(("504", "expected"), *[closed] * few))
    assert missing(phase_of(*[closed] * (few + 1)))
    assert not missing(phase_of(*[closed] * few))
    assert not missing(phase_of(*[collateral] * (few + 1)))
    assert missing(phase_of(("504", "collateral"), *[closed] * (few + 1)))
    assert not missing(phase_of(("504", "collateral"), *[closed] * few))


def test_a_504_is_collateral_only_of_a_graceful_stop_at_its_limit_and_must_say_so(soak):
    graceful = "Gateway Timeout: section 'soak long' ran past the graceful timeout after SIGTERM"
    for fault, outcome, body, end, excused in [
            ("TERM", "504", graceful, 12.0, True),
            ("TERM", "504", graceful, 10.3, False),      # before the graceful limit
            ("TERM", "504", "Gateway Timeout: the request ran longer", 12.0, False),
            ("TERM", "504", graceful.replace("long", "cpu"), 12.0, False),
            ("TERM", "200", "", 12.0, False),           # late: a stop never excuses that
            ("KILL", "504", graceful, 12.0, False)]:
        log = "Worker (pid:7) was sent SIGKILL!" if fault == "KILL" else ""   # TERM: graceful
        r = soak.Result("long", "r1", start=9.0, end=end, outcome=outcome, body=body)
        phase = phase_with(soak, "sync", faults=[soak.Fault(10.0, fault, target=7)],
                           results=[r], died={7: 10.1 if fault == "KILL" else 12.1}, log=log)
        soak.judge(phase, {"r1": 7}, {"r1": 9.0})
        assert (r.verdict == "collateral") == excused, (fault, outcome, body, end)


def test_a_gevent_abort_may_answer_the_greenlet_that_ran_saying_the_worker_was_aborted(soak):
    for flavor, body, excused in [
            ("gevent", "Gateway Timeout: the worker was aborted: section 'soak cap_wait'", True),
            ("gevent", "Gateway Timeout: section 'soak cap_wait' is still running", False),
            ("sync", "Gateway Timeout: the worker was aborted: section 'soak cap_wait'", False)]:
        culprit = hang(soak, 3.0)
        culprit.expect = soak.rules.expected("hang_busy", flavor)[0]
        r = soak.Result("cpu", "r2", start=1.0, end=3.0, outcome="504", body=body)
        phase = phase_with(soak, flavor, results=[culprit, r], died={7: 3.1},
                           log="WORKER TIMEOUT (pid:7)\nWorker (pid:7) exited with code 1.")
        soak.judge(phase, {"r1": 7, "r2": 7}, {"r1": 0.0, "r2": 1.0})
        assert (r.verdict == "collateral") == excused, (flavor, body)


def test_a_threaded_worker_retiring_is_a_graceful_stop_for_its_other_requests(soak):
    stuck = soak.Result("cap_wait", "r1", start=0.0, end=5.1, outcome="closed")
    stuck.expect = soak.rules.expected("cap_wait", "gthread")[0]
    body = "Gateway Timeout: section 'soak stalled' ran past the graceful timeout after SIGTERM"
    other = soak.Result("stalled", "r2", start=1.0, end=4.9, outcome="504", body=body)
    phase = phase_with(soak, "gthread", results=[stuck, other], died={7: 5.2},
                       log="worker (pid 7) exits with 2 request(s)\n"
                           "Worker (pid:7) exited with code 1.")
    soak.judge(phase, {"r1": 7, "r2": 7}, {"r1": 0.0, "r2": 1.0})
    assert not phase.unexpected and other.verdict == "collateral", phase.unexpected


def test_a_request_that_never_reached_the_app_may_be_closed_only_while_a_worker_stops(soak):
    hup = soak.Fault(at=10.0, name="HUP", workers=(7,))
    for flavor, start, end, excused in [
            ("gthread", 10.0, 10.5, True), ("gthread", 10.0, 12.1, True),
            ("gthread", 9.0, 9.0, False), ("gthread", 10.0, 14.0, False),
            ("gthread", 12.05, 12.1, False),      # sent after the worker was seen gone
            ("gevent", 10.0, 10.5, False)]:       # only gthread closes those early
        r = soak.Result("fast", "r1", start=start, end=end, outcome="closed")
        phase = phase_with(soak, flavor, faults=[hup], results=[r], died={7: 12.0})
        soak.judge(phase, {}, {})
        assert (r.verdict == "collateral") == excused, (flavor, start, end)
    for rid, excused in [("gthread-0-1", True), ("gthread-sentinel-1", False)]:
        r = soak.Result("fast", rid, start=10.0, end=12.0, outcome="closed")   # at the death
        phase = phase_with(soak, "gthread", faults=[hup], results=[r], died={7: 12.0},
                           log="Worker (pid:7) was sent SIGKILL!")
        phase.faults = [soak.Fault(at=11.9, name="KILL", target=7)]
        soak.judge(phase, {}, {})
        assert (r.verdict == "collateral") == excused, (flavor, start, end)


def test_a_gil_hold_within_its_cap_that_a_busy_machine_slowed_is_judged_by_how_long_it_held(soak):
    # 2.5 s of GIL hold planned, 10.8 s taken while the test suite ran beside the soak:
    # its 200 came after its cap (the guard cannot run while C code holds the GIL).
    for holds, end, expected in [({}, 10.9, False),           # not measured: 10 s at most
                                 ({"g": 10.8}, 10.9, True),    # measured: it ran that long
                                 ({"g": 2.6}, 10.9, False),    # a short hold excuses nothing
                                 # past cap + --timeout + 1 s, its worker must have been
                                 # killed: a 200 then is a worker that outlived its vouch
                                 ({"g": 14.0}, 14.1, False)]:
        late = soak.Result("gil", "g", start=0.0, end=end, outcome="200", body="ok 7")
        phase = phase_with(soak, "sync", results=[late], alive=[7])
        soak.judge(phase, {"g": 7}, {"g": 0.0}, holds)
        assert (not phase.unexpected) == expected, (holds, phase.unexpected)


def test_the_journal_gives_each_requests_worker_and_start_and_a_gil_holds_length(soak, tmp_path):
    path = tmp_path / "journal"
    path.write_text("r1 7 10.5\ng2 8 11.0\ng2 8 21.9 10.8\n")   # soak_app's two kinds of line
    assert soak.journal(path) == {"r1": (7, 10.5), "g2": (8, 11.0)}
    assert soak.gil_holds(path) == {"g2": 10.8}
    assert soak.journal(tmp_path / "none") == soak.gil_holds(tmp_path / "none") == {}


def test_a_close_is_matched_to_the_interval_in_which_the_death_was_seen(soak):
    # On a busy machine the watcher's look that finds a worker gone comes late: the
    # close the client saw follows the death, which lies after the last look that
    # found the worker alive, not at the first look that found it gone.
    kill = soak.Fault(at=5.0, name="KILL", target=7)
    log = "Worker (pid:7) was sent SIGKILL!"
    for last_alive, excused in [(5.05, True),     # seen gone 1.45 s late: still its close
                                (6.4, False)]:    # seen alive 1.3 s after the close
        r = soak.Result("long", "r1", start=1.0, end=5.1, outcome="closed")
        phase = phase_with(soak, "sync", faults=[kill], results=[r], died={7: 6.5}, log=log)
        phase.last_alive[7] = last_alive
        soak.judge(phase, {"r1": 7}, {"r1": 1.0})
        assert (r.verdict == "collateral") == excused, last_alive


def test_a_fault_explains_a_death_seen_late_if_it_may_have_come_in_time(soak):
    kill = soak.Fault(at=10.0, name="KILL", target=7)
    for last_alive, explained in [(10.2, True), (11.5, False)]:
        phase = phase_with(soak, "sync", faults=[kill], died={7: 12.0},
                           log="Worker (pid:7) was sent SIGKILL!")
        phase.last_alive[7] = last_alive
        soak.explain_deaths(phase, {})
        assert (not phase.unexpected) == explained, last_alive


def test_a_threaded_workers_fast_request_may_be_cancelled_at_timeout_by_its_own_clock(soak):
    # The machine kept a fast request that never reached the app in Gunicorn's hands for
    # --timeout (it waited 4 s for a thread): the worker cancels it then, by its rule.
    # Not earlier, and not later.
    import soak_rules as rules
    for said, since_sent, allowed in [(2.03, 6.4, True), (1.5, 6.4, False),
                                      (3.5, 6.4, False), (2.03, 1.0, False)]:
        body = (f"Gateway Timeout: request 'GET /fast' ran longer than --timeout (2 s) "
                f"outside every section: {said:.2f} s elapsed")
        got = rules.verdict("fast", "gthread", "504", since_sent, since_sent, body,
                            reached_app=False)
        assert (got is not None) == allowed, (said, since_sent)
        assert rules.verdict("fast", "sync", "504", since_sent, since_sent, body,
                             reached_app=False) is None
    # One that reached the app was not kept by the machine in Gunicorn's hands: only a
    # measured stop (neighbours, the machine) excuses it.
    body = ("Gateway Timeout: request 'GET /fast' ran longer than --timeout (2 s) outside "
            "every section: 2.03 s elapsed")
    assert rules.verdict("fast", "gthread", "504", 2.1, 2.1, body) is None
    assert rules.verdict("fast", "gthread", "504", 2.1, 2.1, body, blocked=1.5) is not None


def test_a_fast_request_that_never_reached_the_app_may_be_kept_by_any_workers_gil_hold(soak):
    # Beside the suite: a threaded worker's fast request, its thread kept from the app by
    # a neighbour's GIL hold (so no journal line: its worker is unknown), was cancelled
    # 6.46 s after it began by its worker's clock; the guard was kept from it as long.
    body = ("Gateway Timeout: request 'GET /fast' ran longer than --timeout (2 s) outside "
            "every section: 6.46 s elapsed")
    for gil_began, allowed in [(10.0, True), (20.0, False)]:
        gil = soak.Result("gil", "g1", 0.0, 16.4)
        gil.outcome, gil.began = "200", gil_began
        fast = soak.Result("fast", "f1", 10.2, 16.68)
        fast.outcome, fast.body = "504", body
        phase = phase_with(soak, "gthread", results=[gil, fast])
        soak.judge(phase, {"g1": 7}, {"g1": gil_began})
        assert (fast.verdict == "expected") == allowed, (gil_began, fast.verdict)


def test_a_gil_hold_within_its_cap_that_a_starved_machine_stretched_may_be_killed_past_it(soak):
    rules = soak.rules
    late = rules.NEIGHBOUR_CAP + rules.TIMEOUT + 1
    assert rules.verdict("gil", "sync", "closed", late, late, "", returned=False)
    assert not rules.verdict("gil", "sync", "closed", late, late, ""), \
        "a call that returned: its worker was not killed holding it"
    assert not rules.verdict("gil", "sync", "closed", rules.NEIGHBOUR_CAP - 1,
                             rules.NEIGHBOUR_CAP - 1, "", returned=False), "not before its cap"
    assert not rules.verdict("gil", "sync", "closed", late + 10, late + 10, "",
                             returned=False), "nor long after cap + --timeout"


def test_a_death_a_starved_machine_delayed_is_still_the_requests(soak):
    # A retiring threaded worker exited 2.09 s after its cap_wait's answer, past the 2 s a
    # request's death is allowed, while the machine ran nothing for a second of that.
    for stalls, explained in [([], False), ([(6.5, 1.0)], True)]:
        r = soak.Result("cap_wait", "r1", start=0.0, end=5.05, outcome="closed")
        phase = phase_with(soak, "gthread", results=[r], died={7: 7.14})   # (graceful)
        phase.starvation = Stalls(stalls)
        soak.judge(phase, {"r1": 7}, {"r1": 0.0})
        assert (not phase.unexpected) == explained, (stalls, phase.unexpected)


def test_a_close_the_soaks_own_stalls_kept_from_its_client_is_still_the_deaths(soak):
    # Beside the test suite's parallel group, a client saw the close of a connection
    # whose worker a fault had killed 1.3 s earlier: its own process had not run.
    kill = soak.Fault(at=5.0, name="KILL", target=7)
    log = "Worker (pid:7) was sent SIGKILL!"
    for own, excused in [([], False), ([(6.3, 0.5)], True), ([(9.0, 0.5)], False)]:
        r = soak.Result("long", "r1", start=1.0, end=6.35, outcome="closed")
        phase = phase_with(soak, "sync", faults=[kill], results=[r], died={7: 5.05}, log=log)
        phase.last_alive[7] = 5.0
        phase.own_stalls = soak.OwnStalls.__new__(soak.OwnStalls)
        phase.own_stalls.late = own
        soak.judge(phase, {"r1": 7}, {"r1": 1.0})
        assert (r.verdict == "collateral") == excused, own


def test_a_graceful_stop_a_starved_machine_kept_past_timeout_may_end_in_the_arbiters_abort(soak):
    # Beside the test suite: a HUP stopped a threaded worker, which said "Worker exiting"
    # and was aborted by the arbiter 2 s later, while the machine ran nothing for 1.5 s.
    hup = soak.Fault(at=10.0, name="HUP", target=None, workers=(7,))
    log = ("Worker exiting (pid: 7)\nWORKER TIMEOUT (pid:7)\n"
           "Worker (pid:7) was sent SIGABRT!")
    for stalls, explained in [([], False), ([(12.0, 1.5)], True)]:
        phase = phase_with(soak, "gthread", faults=[hup], died={7: 13.2}, log=log)
        phase.last_alive[7] = 13.1
        phase.starvation = Stalls(stalls)
        soak.explain_deaths(phase, {})
        assert (not phase.unexpected) == explained, (stalls, phase.unexpected)


def test_an_abort_whose_exit_a_hups_sigterm_overtook_closes_what_its_worker_ran(soak):
    # CI (3.13): the arbiter aborted a gevent worker whose hub a hang blocked; a HUP's
    # SIGTERM killed it as it exited; a load request its keep-alive connection had sent
    # (never read: no journal line) was closed then, and was judged unexpected.
    hup = soak.Fault(at=10.0, name="HUP", workers=(7,))
    log = ("[CRITICAL] WORKER TIMEOUT (pid:7)\n"
           "[ERROR] Worker (pid:7) was sent SIGTERM!\n")
    assert soak.how_it_ended(log, 7) == "aborted"
    assert soak.how_it_ended("Worker (pid:7) was sent SIGTERM!", 7) == "graceful"
    hang = soak.Result("hang_busy", "gevent-0-3", start=7.5, end=9.95, outcome="504",
                       body="Gateway Timeout: the request ran longer than --timeout (2 s)")
    r = soak.Result("fast", "gevent-load2-5", start=9.5, end=10.05, outcome="closed")
    phase = phase_with(soak, "gevent", faults=[hup], results=[hang, r], died={7: 10.0},
                       log=log)
    soak.judge(phase, {"gevent-0-3": 7}, {"gevent-0-3": 7.5})
    assert hang.verdict == "expected" and r.verdict == "collateral", (hang.verdict, r.verdict)
