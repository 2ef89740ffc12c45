"""The throughput benchmark's apps: hello world, with and without a section (``app``,
WSGI; ``asgi_app``, the same for the uvicorn workers).

``tests/apps/app.py``'s ``/section?s=0`` calls ``time.sleep(0)``, which costs
~90 us on a VM and would dilute the section's cost; here the two routes do
exactly the same work, one of them inside ``long_section``.
"""

from heartworker import long_section

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/section":
        with long_section("request", cap=60):
            start_response("200 OK", HEADERS)
    else:
        start_response("200 OK", HEADERS)
    return [BODY]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return                      # (the lifespan: uvicorn finds it unsupported)
    start = {"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]}
    if scope["path"] == "/section":
        async with long_section("request", cap=60):
            await send(start)
    else:
        await send(start)
    await send({"type": "http.response.body", "body": BODY})
