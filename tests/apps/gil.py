"""C calls that hold the GIL for a chosen time, sized to this machine's speed.

``sum(range(n))`` runs entirely in C without ever releasing the GIL (no
bytecode runs, so no other Python thread can), like ``pickle.loads`` of a big
model.  ``pickle_payload`` builds a real pickle whose ``loads`` takes about
the requested time.  Both are calibrated once per process.
"""

import pickle
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


@lru_cache(maxsize=None)
def _unpickle_seconds_per_item():
    n = 200_000
    data = pickle.dumps([(i, str(i)) for i in range(n)])
    t = time.perf_counter()
    pickle.loads(data)
    return (time.perf_counter() - t) / n


@lru_cache(maxsize=4)
def pickle_payload(seconds):
    """A pickle whose ``loads`` takes about ``seconds``."""
    n = int(seconds / _unpickle_seconds_per_item())
    return pickle.dumps([(i, str(i)) for i in range(n)], protocol=pickle.HIGHEST_PROTOCOL)
