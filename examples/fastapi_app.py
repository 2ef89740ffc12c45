"""A FastAPI app under heartworker's uvicorn worker: a slow model load in the lifespan,
one long endpoint in a section, a quick one, one stuck outside every section.  From the
repository's root:

    .venv/bin/heartworker -k heartworker.UvicornWorker --chdir examples --timeout 2 \\
        --startup-stall 5 fastapi_app:app

(`bash tests/run.sh` creates .venv with FastAPI and uvicorn-worker.)  Then:

    curl localhost:8000/predict?s=5   # 200 after 5 s: declared long work, --timeout 2
    curl localhost:8000/quick         # 200 at once
    curl localhost:8000/hang          # 504 after 2 s: blocks the loop outside every section
"""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from heartworker import long_section

from model import call_upstream_that_hangs, load_model

state = {}


@asynccontextmanager
async def lifespan(app):
    state["model"] = load_model()   # in the lifespan startup: inside the startup section
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/predict")
@long_section("predict", cap=60)    # FastAPI still reads predict's own parameters
async def predict(s: float = 5.0):
    await asyncio.sleep(s)          # waiting for a batch on the accelerator
    return {"score": sum(state["model"].values()), "pid": os.getpid()}


@app.get("/quick")
async def quick():
    return {"ok": True, "pid": os.getpid()}


@app.get("/hang")
async def hang():
    call_upstream_that_hangs()      # blocks the loop outside every section: ended at --timeout
    return "never"
