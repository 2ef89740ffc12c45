"""The WSGI app the tests run under real Gunicorn.

Startup behaviour comes from the environment (it runs at import, inside
heartworker's startup section); requests are routed by path, with numbers in
the query string.  Function names matter: tests look for them in logged stacks.
"""

import os
import threading
import time
from urllib.parse import parse_qs

from heartworker import long_section

from .gil import hold_gil


def hang_at_startup():
    while True:
        time.sleep(3600)


if os.environ.get("APP_STARTUP_SLEEP"):
    time.sleep(float(os.environ["APP_STARTUP_SLEEP"]))
if os.environ.get("APP_STARTUP_GIL"):
    hold_gil(float(os.environ["APP_STARTUP_GIL"]))
if os.environ.get("APP_STARTUP_HANG"):
    hang_at_startup()


def stuck_in_section():
    while True:
        time.sleep(3600)


def hang_outside():
    while True:
        time.sleep(3600)


def busy_outside(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def background_section():
    with long_section("background", cap=120):
        time.sleep(60)


@long_section("decorated", cap=30)
def decorated(seconds):
    time.sleep(seconds)
    return b"decorated done"


def fanout(n, seconds):
    """n greenlets, each inside its own section (gevent worker only)."""
    import gevent

    def one():
        with long_section("fanout", cap=60):
            gevent.sleep(seconds)

    start = time.monotonic()
    gevent.joinall([gevent.spawn(one) for _ in range(n)], raise_error=True)
    return f"{n} sections in {time.monotonic() - start:.3f} s".encode()


def route(path, q):
    s, cap, name = q("s", 0.0), q("cap", None), q("name", None, str)
    if path == "/pid":
        return str(os.getpid()).encode()
    if path == "/sleep":
        time.sleep(s)
    elif path == "/hang":
        hang_outside()
    elif path == "/busy":
        busy_outside(s)
    elif path == "/gil":
        hold_gil(s)
    elif path == "/section":
        with long_section(name or "request", cap=cap):
            time.sleep(s)
    elif path == "/section_busy":
        with long_section(name or "busy", cap=cap):
            busy_outside(s)
    elif path == "/section_gil":
        with long_section(name or "gil", cap=cap):
            hold_gil(s)
    elif path == "/section_hang":
        with long_section(name or "stuck", cap=cap):
            stuck_in_section()
    elif path == "/section_stubborn":
        with long_section(name or "stubborn", cap=cap):
            try:
                stuck_in_section()
            except BaseException:       # swallows the cancellation and carries on
                stuck_in_section()
    elif path == "/section_then_hang":
        with long_section("before hang", cap=cap):
            time.sleep(s)
        hang_outside()
    elif path == "/bg_section_then_hang":
        threading.Thread(target=background_section, daemon=True).start()
        time.sleep(0.2)
        hang_outside()
    elif path == "/nested":
        with long_section("outer", cap=q("outer", 30.0)):
            time.sleep(s)
            with long_section("inner", cap=q("inner", 30.0)):
                time.sleep(q("inner_s", 0.0))
            time.sleep(s)
    elif path == "/error_in_section":
        with long_section("failing", cap=cap):
            raise ValueError("boom inside a section")
    elif path == "/fanout":
        return fanout(int(q("n", 100)), s)
    elif path == "/decorated":
        return decorated(s)
    else:
        return None
    return b"done"


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))

    def q(key, default, kind=float):
        return kind(query[key][0]) if key in query else default

    body = route(environ.get("PATH_INFO", "/"), q)
    if body is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route"]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
