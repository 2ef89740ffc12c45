"""The plain ASGI app the uvicorn worker's tests run under real Gunicorn.

Its lifespan startup comes from the environment (it runs inside heartworker's
startup section); requests are routed by path, with numbers in the query string.
Function names matter: tests look for them in logged stacks.
"""

import asyncio
import os
import time
from urllib.parse import parse_qs

import heartworker
from heartworker import long_section

from .gil import hold_gil_at_least as hold_gil


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def lifespan_startup():
    """A model loaded in the lifespan: blocking, holding the GIL, awaiting, or hung."""
    env = os.environ
    if env.get("APP_LIFESPAN_SLEEP"):
        time.sleep(float(env["APP_LIFESPAN_SLEEP"]))      # blocks the loop
    if env.get("APP_LIFESPAN_GIL"):
        hold_gil(float(env["APP_LIFESPAN_GIL"]))
    for i, seconds in enumerate(filter(None, env.get("APP_LIFESPAN_PHASES", "").split(",")), 1):
        await asyncio.sleep(float(seconds))
        heartworker.progress(f"phase {i} loaded")
    if env.get("APP_LIFESPAN_HANG"):
        await asyncio.Event().wait()
    if env.get("APP_LIFESPAN_SECTION_HANG"):
        async with long_section("warm cache", cap=float(env["APP_LIFESPAN_SECTION_HANG"])):
            await asyncio.Event().wait()


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifespan_startup()
            except Exception as exc:            # (as Starlette's router does)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                raise
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hang_in_section(cap):
    async with long_section("upstream", cap=cap):
        await asyncio.Event().wait()


async def block_in_section(seconds, cap):
    with long_section("blocking load", cap=cap):
        time.sleep(seconds)


async def busy_in_section(seconds, cap):
    async with long_section("inference", cap=cap):
        busy(seconds)


@long_section("decorated", cap=30)
async def decorated(seconds):
    await asyncio.sleep(seconds)
    return "decorated"


async def text(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    path = scope["path"]
    q = {k: float(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
    s, cap = q.get("s", 0.0), q.get("cap", 30.0)
    if path == "/pid":
        return await text(send, str(os.getpid()))
    if path == "/await":                       # waits outside every section
        await asyncio.sleep(s)
    elif path == "/block":                     # blocks the loop outside every section
        time.sleep(s)
    elif path == "/busy":
        busy(s)
    elif path == "/section_await":
        async with long_section("export", cap=cap) as section:
            for _ in range(int(s * 10)):
                await asyncio.sleep(0.1)
                section.progress()
    elif path == "/section_block":
        await block_in_section(s, cap)
    elif path == "/section_busy":
        await busy_in_section(s, cap)
    elif path == "/section_gil":
        with long_section("gil", cap=cap):
            hold_gil(s)
    elif path == "/section_hang":
        await hang_in_section(cap)
    elif path == "/decorated":
        return await text(send, await decorated(s))
    elif path == "/stream_then_hang":          # the response has started: a close, not a 504
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await hang_in_section(cap)
    else:
        return await text(send, "not found", 404)
    await text(send, "done")
