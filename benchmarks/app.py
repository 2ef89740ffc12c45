"""The throughput benchmark's WSGI app: hello world, with and without a section.

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
