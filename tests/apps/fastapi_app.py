"""A FastAPI app: a model loaded in phases in the lifespan, a long endpoint, a quick one.

From the environment: ``APP_LIFESPAN_BLOCK_ONCE`` (seconds the first worker's lifespan
blocks the loop: later workers load at once), ``APP_HTTP_MIDDLEWARE`` (Starlette's
``BaseHTTPMiddleware``: endpoints run in a task of their own).

The ``def`` endpoints run in Starlette's thread pool: their sections are their threads'
(``starlette_app.py`` has more of them).
"""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

import heartworker
from heartworker import long_section


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
    for phase in ("weights", "tokenizer", "warm-up"):
        time.sleep(0.8)                       # blocks the loop, as a real load does
        heartworker.progress(phase)
    yield


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


@app.get("/export")
@long_section("export", cap=1)
def export(seconds: float):
    busy(seconds)
    return {"seconds": seconds}


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
