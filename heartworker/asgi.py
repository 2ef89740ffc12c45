"""The ASGI app as the uvicorn worker serves it: route caps, and the ``504`` of a request
ended by a deadline (``answer.py`` is the WSGI workers' counterpart).

* A request that a route rule matches runs in the rule's section, anchored at
  this wrapper's frame (it covers the app and the sending of its response).
* With ``HEARTWORKER_REQUEST_TIMEOUT``, an HTTP request is a deadline of its
  task's (``requests.py``): the limit after it was last outside every section.
* A request ended by a cancellation (:class:`~heartworker.SectionCapExceeded`,
  from its task's section: ``tasks.py``) or by the worker's abort (the
  abort's ``SystemExit`` in the task that blocked the loop; the other tasks'
  ``CancelledError`` as the aborted loop shuts down) gets ``504 Gateway
  Timeout`` with ``Connection: close`` and a body naming the cause, unless
  its response had started: then it is ended as uvicorn ends a failed one
  (the connection closed, the response truncated).

Websockets and the lifespan pass through as they are.
"""

import asyncio
import sys

from .regions import nothing
from .section import SectionCapExceeded

try:
    _GROUP = BaseExceptionGroup
except NameError:           # Python 3.10: no exception groups but anyio's backport's
    try:
        from exceptiongroup import BaseExceptionGroup as _GROUP
    except ImportError:
        _GROUP = ()


def cancellation_in(exc):
    """The :class:`SectionCapExceeded` that ``exc`` is, or holds alone in an exception
    group (anyio's task groups, Starlette's middleware), or None."""
    while isinstance(exc, _GROUP) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, SectionCapExceeded) else None


def answering_timeouts(app, worker, routes=None, limit=None):
    """Wrap the ASGI ``app`` for ``worker`` (its registry, log, abort cause): ``routes``,
    the route caps (or None); ``limit``, ``HEARTWORKER_REQUEST_TIMEOUT`` (or None)."""
    match = routes.match if routes is not None else None

    async def app_answering_timeouts(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started = False

        async def noting_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True      # (before the send: a cancellation may land in it)
            await send(message)

        method, path, heart = scope["method"], path_info(scope), worker.heart
        here = sys._getframe()
        route = request = None
        if match is not None:
            rule = match(method, path)
            if rule is not None:
                route = rule.open(heart, here)
        if limit is not None:
            request = heart.request_begins(f"{method} {path}", here, limit)
        worker.requests_begun += 1
        try:
            try:
                return await app(scope, receive, noting_send)
            finally:
                if route is not None:
                    heart.exit(route)
                if request is not None:
                    heart.request_done(request, nothing)
                for ended in (route, request):     # (cancelled by task.cancel(): tasks.py)
                    if ended is not None and ended.why is not None:
                        heart.leave_cancelled(ended, sys.exc_info()[1])
        except BaseException as exc:
            cause = cause_of(worker, exc)
            if cause is None:
                raise
            by_arbiter = isinstance(exc, SystemExit) and not worker.guard.aborting
            fix = worker.route_hint(method, path) if worker.abort_outside and \
                cause is worker.abort_cause else ""
            worker.log.warning("heartworker: %s %s ended: %s%s", method, path, cause, fix,
                               exc_info=exc if by_arbiter else None)
            try:
                if started:
                    raise           # (uvicorn closes the connection)
                await answer_timeout(send, cause)
            finally:
                if isinstance(exc, SystemExit):
                    worker.leave_loop(exc)      # (uvicorn would catch it and serve on)
        finally:
            worker.requests_ended += 1

    return app_answering_timeouts


def path_info(scope):
    """The request's path as WSGI's ``PATH_INFO``: without the app's ``root_path``."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def cause_of(worker, exc):
    """What a request ended by ``exc`` was ended by (its 504 names it), or None: ``exc``
    is the app's own."""
    cancelled = cancellation_in(exc)
    if cancelled is not None:
        return str(cancelled)
    cause = worker.abort_cause
    if cause is None:
        return None
    if isinstance(exc, SystemExit):
        return cause                # this task's code had the loop when the abort came
    if isinstance(exc, asyncio.CancelledError):
        return f"the worker was aborted: {cause}"    # (its loop shuts down)
    return None


async def answer_timeout(send, cause):
    body = f"Gateway Timeout: {cause}\n".encode("utf-8")
    await send({"type": "http.response.start", "status": 504, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
