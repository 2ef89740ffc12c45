"""A FastAPI app: a model loaded in phases in the lifespan, a long endpoint, a quick one."""

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

import heartworker
from heartworker import long_section


@asynccontextmanager
async def lifespan(app):
    for phase in ("weights", "tokenizer", "warm-up"):
        time.sleep(0.8)                       # blocks the loop, as a real load does
        heartworker.progress(phase)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/pid")
async def pid():
    import os
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
def report(seconds: float):
    with long_section("report", cap=30):      # a def endpoint: Starlette's thread pool
        time.sleep(seconds)
    return {"seconds": seconds}
