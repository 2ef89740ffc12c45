"""A FastAPI app: a model loaded in phases in the lifespan, a long endpoint, a quick one.

From the environment: ``APP_LIFESPAN_BLOCK_ONCE`` (seconds the first worker's lifespan
blocks the loop: later workers load at once), ``APP_LIFESPAN_IN_THREAD`` (the phases load
in the thread pool, each ``APP_LIFESPAN_PHASE`` seconds long), ``APP_HTTP_MIDDLEWARE``
(Starlette's ``BaseHTTPMiddleware``: endpoints run in a task of their own).

The ``def`` endpoints run in Starlette's thread pool: their sections are their threads'.
"""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import heartworker
from heartworker import long_section
from tests.apps.gil import hold_gil_at_least


def first_worker():
    """Is this the server's first worker to load?  (Each test server has its HOME.)"""
    mark = os.path.join(os.environ["HOME"], "loaded-once")
    first = not os.path.exists(mark)
    open(mark, "a").close()
    return first


@asynccontextmanager
async def lifespan(app):
    if os.environ.get("APP_LIFESPAN_BLOCK_ONCE") and first_worker():
        time.sleep(float(os.environ["APP_LIFESPAN_BLOCK_ONCE"]))
    if os.environ.get("APP_LIFESPAN_IN_THREAD"):
        await run_in_threadpool(load_in_phases, float(os.environ["APP_LIFESPAN_PHASE"]))
    else:
        load_in_phases(0.8)                   # blocks the loop, as a real load does
    yield


def load_in_phases(seconds):
    for phase in ("weights", "tokenizer", "warm-up"):
        time.sleep(seconds)
        heartworker.progress(phase)


app = FastAPI(lifespan=lifespan)

if os.environ.get("APP_HTTP_MIDDLEWARE"):
    @app.middleware("http")
    async def passing_through(request, call_next):
        return await call_next(request)


@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}


@app.get("/predict")
@long_section("inference", cap=30)
async def predict(seconds: float, label: str = "x"):
    await asyncio.sleep(seconds)
    return {"label": label, "seconds": seconds}


@app.get("/hang")
@long_section("upstream", cap=1)
async def hang():
    await asyncio.Event().wait()


@app.get("/report")
def report(seconds: float, cap: float = 30):
    with long_section("report", cap=cap):     # a def endpoint: Starlette's thread pool
        time.sleep(seconds)
    return {"seconds": seconds}


@app.get("/report_busy")
def report_busy(seconds: float, cap: float = 30):
    with long_section("report", cap=cap):      # Python code, ended in its thread at the cap
        busy(seconds)
    return {"seconds": seconds}


@app.get("/report_gil")
def report_gil(seconds: float):
    with long_section("report", cap=30):       # C code holding the GIL: the loop stalls too
        hold_gil_at_least(seconds)
    return {"seconds": seconds}


@app.get("/export")
@long_section("export", cap=1)
def export(seconds: float):
    busy(seconds)
    return {"seconds": seconds}


@app.get("/plain_def")
def plain_def(seconds: float):
    time.sleep(seconds)
    return {"seconds": seconds}


@app.get("/pipeline")
@long_section("pipeline", cap=30, stall=1.5)
async def pipeline(steps: int, quiet: bool = False):
    return await run_in_threadpool(run_steps, steps, quiet)   # its thread reports progress


def run_steps(steps, quiet):
    for step in range(steps):
        time.sleep(0.8)
        if not quiet:
            heartworker.progress(f"step {step}")
    return {"steps": steps}


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@app.get("/report_gil_outside")
def report_gil_outside(seconds: float):
    hold_gil_at_least(seconds)
    return {"seconds": seconds}


@app.get("/block")
async def block(seconds: float):
    time.sleep(seconds)                          # blocks the loop outside every section
    return {"seconds": seconds}


@app.get("/foreign")
def foreign(seconds: float, cap: float):
    asyncio.run(in_foreign_loop(seconds, cap))   # a loop of the thread's own: not lent
    return {"seconds": seconds}


async def in_foreign_loop(seconds, cap):
    async with long_section("foreign", cap=cap):
        await asyncio.sleep(seconds)


_left_open = []


@app.get("/leave_open")
def leave_open():
    steps = in_section_then_suspended()
    next(steps)
    _left_open.append(steps)                     # its thread's section stays open
    return {}


def in_section_then_suspended():
    with long_section("left open", cap=30):
        yield


@app.get("/two_threads")
async def two_threads(first: float, second: float):
    await asyncio.gather(asyncio.to_thread(report, first), asyncio.to_thread(report, second))
    return {"seconds": max(first, second)}
