"""What the client gets when its request is ended by a deadline: ``504 Gateway Timeout``.

A request ends this way when heartworker cancels its section
(:class:`~heartworker.SectionCapExceeded` reaches the worker: Flask's and
Django's error handlers catch ``Exception`` only), or when the worker is
aborted for a timeout (the guard's SIGABRT, or the arbiter's: Gunicorn's
``handle_abort`` raises ``SystemExit``).  Proxies and client SDKs read 504 as
"the upstream timed out", which is what happened, and may retry; a 500 reads
as an application crash.

* No response byte sent yet: ``504`` with ``Connection: close`` and a short
  plain-text body naming the cause (the section and its cap, or
  ``--timeout``), and a line in the access log.
* The response had started: nothing is written (a second status line would
  corrupt the stream); the connection is closed and the client sees a
  truncated response.  Gunicorn itself does this for ``SystemExit``; for a
  cancellation, :func:`noting_response` keeps track of the response of the
  running request so that :func:`answer_timeout` can tell.
"""

from datetime import timedelta
from time import monotonic

from gunicorn import util
from gunicorn.http.wsgi import Response, default_environ


def answer_stream(log, req, h2_conn, exc):
    """An HTTP/2 stream ended by a cancellation: its ``504`` (a reset if its response had
    started: Gunicorn's ``send_error`` says so); the connection's other streams go on."""
    log.warning("heartworker: %s %s ended: %s", req.method, req.path, exc)
    try:
        h2_conn.send_error(req.stream.stream_id, 504, f"Gateway Timeout: {exc}")
    except Exception:
        log.debug("heartworker: failed to send the HTTP/2 504")


def noting_response(app, context):
    """Wrap the WSGI app: note its Gunicorn response on ``context()`` (the request's owner)."""

    def app_noting_its_response(environ, start_response):
        here = context()
        here.heartworker_response = getattr(start_response, "__self__", None)
        here.heartworker_started = monotonic()
        return app(environ, start_response)

    return app_noting_its_response


_SEND_HEADERS = Response.send_headers.__code__


def in_send_headers(exc):
    """Was ``exc`` raised in Gunicorn's ``Response.send_headers`` (or below it)?"""
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        if tb.tb_frame.f_code is _SEND_HEADERS:
            return True
        tb = tb.tb_next
    return False


def noted_response(context, req):
    """The Gunicorn response of ``req`` and when its app was called, as noted on ``context``."""
    resp = getattr(context, "heartworker_response", None)
    if resp is None or resp.req is not req:
        return None, None
    return resp, context.heartworker_started


def answer_timeout(worker, req, client, addr, cause, exc=None, raised=None):
    """Answer ``req`` with a 504 naming ``cause``, unless its response had started.

    ``exc``: log its traceback too (where the request was when it was ended),
    for the endings that no heartworker CRITICAL line has shown already.
    ``raised``: the exception that ended it; if it was raised while Gunicorn
    sent the status line and headers, some may be on the wire already (Gunicorn
    notes them as sent once all are): a 504 after them would corrupt the
    response, so the connection is closed instead.
    """
    fix = (worker.route_hint(req.method, req.path)
           if worker.abort_outside and cause is worker.abort_cause else "")
    worker.log.warning("heartworker: %s %s ended: %s%s", req.method, req.uri, cause, fix,
                       exc_info=exc)
    noted, started = (noted_response(worker.flavor.request_context(), req)
                      if worker.flavor is not None else (None, None))
    if noted is not None and noted.headers_sent or in_send_headers(raised):
        return                  # the caller closes the connection: a truncated response
    body = f"Gateway Timeout: {cause}\n".encode("utf-8")
    head = ("HTTP/1.1 504 Gateway Timeout\r\n"
            "Connection: close\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    try:
        util.write_nonblock(client, head + body)
    except Exception:
        worker.log.debug("heartworker: failed to send the 504")
    addr = addr or ("", -1)
    environ = default_environ(req, client, worker.cfg)
    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
    resp = Response(req, client, worker.cfg)
    resp.status = "504 Gateway Timeout"
    resp.response_length = len(body)
    took = timedelta(seconds=monotonic() - started) if started is not None else timedelta(0)
    worker.log.access(resp, req, environ, took)
