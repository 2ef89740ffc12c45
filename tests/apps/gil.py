"""A C call that holds the GIL for a chosen time, sized to this machine's speed.

``sum(range(n))`` runs entirely in C without ever releasing the GIL: no
bytecode runs, so no other Python thread can, exactly like ``pickle.loads``
of a big model (a 200 MB pickle of tuples takes 20 s and 3.7 GB just to
build, too heavy for a test suite; the property under test is the same).
"""

import time
from functools import lru_cache


@lru_cache(maxsize=None)
def _seconds_per_item():
    n = 2_000_000
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sum(range(n))
        best = min(best, time.perf_counter() - t)
    return best / n


def hold_gil(seconds):
    """Hold the GIL in C code for about ``seconds``."""
    return sum(range(int(seconds / _seconds_per_item())))
