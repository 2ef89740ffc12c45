"""A stand-in for a slow model: loading it takes a while, in shards, reporting progress."""

import os
import time

import heartworker
from heartworker import long_section

SHARDS = int(os.environ.get("EXAMPLE_SHARDS", "4"))
SECONDS_PER_SHARD = float(os.environ.get("EXAMPLE_SHARD_SECONDS", "1"))


def load_model():
    """Runs inside the worker's startup section: each shard gets the stall window."""
    weights = {}
    with long_section("load model", cap=600, stall=30):
        for shard in range(1, SHARDS + 1):
            time.sleep(SECONDS_PER_SHARD)            # reading a shard from disk
            weights[shard] = shard
            heartworker.progress(f"shard {shard}/{SHARDS} loaded")
    return weights


def predict(model, seconds):
    time.sleep(seconds)                              # a long, legitimate computation
    return sum(model.values())


def call_upstream_that_hangs():
    time.sleep(3600)                                 # an upstream that never answers
