"""A C call that holds the GIL for a chosen time, sized to this machine's speed.

``sum(range(n))`` runs entirely in C without ever releasing the GIL: no
bytecode runs, so no other Python thread can, exactly like ``pickle.loads``
of a big model (a 200 MB pickle of tuples takes 20 s and 3.7 GB just to
build, too heavy for a test suite; the property under test is the same).

The speed is measured in the thread's CPU time, not in wall time: a hold
then lasts about as long as asked or longer, however loaded the machine is (the
suite runs in parallel).  Measured in wall time, a calibration that the
scheduler slowed down made every later hold short: CI measured 1.99 s for 3 s.

The measure is taken once, at import (about 30 ms of CPU), never inside a
hold: a calibration is Python code between its C calls, so a cancellation
(or the cap it waits for) landing in it would end the section before the
hold began, and the test would not test what it names.  The test process
measures it once and hands it to the servers it starts (``GIL_RATE_VARIABLE``,
set by ``tests/conftest.py``): each of some thousand server boots in the suite
would measure it again.
"""

import os
import time

GIL_RATE_VARIABLE = "HEARTWORKER_TEST_GIL_SECONDS_PER_ITEM"


def _cpu_seconds_per_item():
    n = 500_000
    best = float("inf")
    for _ in range(3):
        t = time.thread_time()
        sum(range(n))
        best = min(best, time.thread_time() - t)
    return best / n


SECONDS_PER_ITEM = float(os.environ.get(GIL_RATE_VARIABLE) or _cpu_seconds_per_item())


def hold_gil(seconds):
    """Hold the GIL in C code for about ``seconds`` of CPU time (longer in wall time when loaded)."""
    return sum(range(int(seconds / SECONDS_PER_ITEM)))


def hold_gil_at_least(seconds):
    """Hold the GIL for at least ``seconds`` of wall time: one hold, topped up by another
    if the machine ran it faster than measured (a bytecode boundary then comes between)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hold_gil(end - time.monotonic())
