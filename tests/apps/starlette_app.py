"""A Starlette app whose ``def`` endpoints run in Starlette's thread pool (lent.py).

Lighter than FastAPI to boot (the suite starts it often); FastAPI runs its ``def``
endpoints through the same thread pool (``fastapi_app.py``).  From the environment:
``APP_LIFESPAN_PHASE`` (seconds: the lifespan loads in three phases of that length in
the thread pool, reporting progress after each), ``APP_LIFESPAN_STEPS`` (the lifespan
runs ``/pipeline``'s steps in a section with a stall limit), ``APP_HTTP_MIDDLEWARE``
(Starlette's ``BaseHTTPMiddleware``: endpoints run in a task of their own).
"""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route

import heartworker
from heartworker import long_section
from tests.apps.gil import hold_gil_at_least


@asynccontextmanager
async def lifespan(app):
    if os.environ.get("APP_LIFESPAN_PHASE"):
        await run_in_threadpool(load_in_phases, float(os.environ["APP_LIFESPAN_PHASE"]))
    if os.environ.get("APP_LIFESPAN_STEPS"):      # in a section of its own, with a stall limit
        await in_a_pipeline(int(os.environ["APP_LIFESPAN_STEPS"]))
    yield


def load_in_phases(seconds):
    for phase in ("weights", "tokenizer", "warm-up"):
        time.sleep(seconds)
        heartworker.progress(phase)


def number(request, name, default=None):
    value = request.query_params.get(name)
    return default if value is None else float(value)


def answer(**values):
    return JSONResponse(values)


def pid(request):
    return answer(pid=os.getpid())


def report(request):
    seconds = number(request, "seconds")
    with long_section("report", cap=number(request, "cap", 30)):     # asleep in a syscall
        time.sleep(seconds)
    return answer(seconds=seconds)


def report_busy(request):
    seconds = number(request, "seconds")
    with long_section("report", cap=number(request, "cap", 30)):     # Python code
        busy(seconds)
    return answer(seconds=seconds)


def report_gil(request):
    seconds = number(request, "seconds")
    with long_section("report", cap=number(request, "cap", 30)):   # C code holding the GIL
        hold_gil_at_least(seconds)
    return answer(seconds=seconds)


def report_gil_outside(request):
    seconds = number(request, "seconds")
    hold_gil_at_least(seconds)
    return answer(seconds=seconds)


def plain(request):
    seconds = number(request, "seconds")
    time.sleep(seconds)
    return answer(seconds=seconds)


@long_section("pipeline", cap=30, stall=1.5)
async def pipeline(request):
    steps, quiet = int(number(request, "steps")), bool(number(request, "quiet", 0))
    return answer(steps=await run_in_threadpool(run_steps, steps, quiet))   # its thread reports


async def pipelines(request):
    steps, n = int(number(request, "steps")), int(number(request, "n", 2))
    await asyncio.gather(*(in_a_pipeline(steps) for _ in range(n)))    # a task each
    return answer(steps=steps)


@long_section("pipeline", cap=30, stall=1.5)
async def in_a_pipeline(steps):
    return await run_in_threadpool(run_steps, steps, False)


async def task_and_thread(request):
    thread = asyncio.ensure_future(asyncio.to_thread(sleep_in_section, number(request, "seconds")))
    await asyncio.sleep(0.2)
    async with long_section("own", cap=10):     # the task's own section ends first
        await asyncio.sleep(0.1)
    await thread
    return answer()


def run_steps(steps, quiet):
    for step in range(steps):
        time.sleep(0.8)
        if not quiet:
            heartworker.progress(f"step {step}")
    return steps


async def block(request):
    seconds = number(request, "seconds")
    time.sleep(seconds)                       # blocks the loop outside every section
    return answer(seconds=seconds)


def foreign(request):
    asyncio.run(in_foreign_loop(number(request, "seconds"), number(request, "cap")))
    return answer()                           # a loop of the thread's own: not lent


async def in_foreign_loop(seconds, cap):
    async with long_section("foreign", cap=cap):
        await asyncio.sleep(seconds)


_left_open = []


def leave_open(request):
    steps = in_section_then_suspended()
    next(steps)
    _left_open.append(steps)                  # its thread's section stays open
    return answer()


def in_section_then_suspended():
    with long_section("left open", cap=30):
        yield


async def two_threads(request):
    first, second = number(request, "first"), number(request, "second")
    await asyncio.gather(asyncio.to_thread(sleep_in_section, first),
                         asyncio.to_thread(sleep_in_section, second))
    return answer(seconds=max(first, second))


def sleep_in_section(seconds):
    with long_section("report", cap=30):
        time.sleep(seconds)


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


middleware = []
if os.environ.get("APP_HTTP_MIDDLEWARE"):     # (endpoints run in a task of their own)
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    async def passing_through(request, call_next):
        return await call_next(request)

    middleware.append(Middleware(BaseHTTPMiddleware, dispatch=passing_through))

app = Starlette(lifespan=lifespan, middleware=middleware, routes=[
    Route(f"/{endpoint.__name__}", endpoint)
    for endpoint in (pid, report, report_busy, report_gil, report_gil_outside, plain, pipeline,
                     pipelines, block, foreign, leave_open, two_threads, task_and_thread)])
