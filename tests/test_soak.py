"""The soak, short (``benchmarks/soak.py --quick``): a minute of mixed traffic and faults.

Every answer is checked by the soak itself against the README's semantics
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
    assert requests > 50 and replaced > 0, out


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


def phase_with(soak, flavor, faults=(), results=(), died=None, log=""):
    phase = soak.Phase(flavor, results=list(results), faults=list(faults), log=log)
    phase.booted = list(died or {})
    phase.died = dict(died or {})
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
    phase = phase_with(soak, "sync", faults=[hup], died={7: 11.0}, log=sigkilled)
    soak.explain_deaths(phase, {})
    assert phase.unexpected, "a HUP explains a graceful exit only"


def test_a_request_explains_its_workers_death_only_around_its_own_end(soak):
    def hang(end):
        r = soak.Result("hang_busy", "r1", start=0.0, end=end, outcome="504")
        r.expect = soak.rules.expected("hang_busy", "sync")[0]
        return r
    for end, explained in [(2.1, True), (1.0, True), (30.0, False)]:
        phase = phase_with(soak, "sync", results=[hang(end)], died={7: 2.2})
        soak.explain_deaths(phase, {"r1": 7})
        assert (not phase.unexpected) == explained, end


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
                              body="section 'soak cap_wait' ran past its cap")
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


def test_a_request_that_never_reached_the_app_may_be_closed_only_while_a_worker_stops(soak):
    hup = soak.Fault(at=10.0, name="HUP", workers=(7,))
    for end, excused in [(10.5, True), (12.1, True), (9.0, False), (14.0, False)]:
        r = soak.Result("fast", "r1", start=end, end=end, outcome="closed")
        phase = phase_with(soak, "gthread", faults=[hup], results=[r], died={7: 12.0})
        soak.judge(phase, {}, {})
        assert (r.verdict == "collateral") == excused, end
