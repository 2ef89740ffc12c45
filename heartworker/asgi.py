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
  (the connection closed, the response truncated).  So does one that uvicorn
  cancels as the graceful stop's drain ends (``--graceful-timeout``).

Websockets and the lifespan pass through as they are.
"""

import asyncio
import sys

from .lent import REQUEST
from .regions import nothing
from .section import SectionCapExceeded

_current_task = asyncio.current_task
_set_request = REQUEST.set

try:
    _GROUP = BaseExceptionGroup
except NameError:           # Python 3.10: no exception groups but anyio's backport's
    try:
        from exceptiongroup import BaseExceptionGroup as _GROUP
    except ImportError:
        _GROUP = ()


def found_in(exc, kind):
    """The exception of ``kind`` that ``exc`` is, or holds in an exception group (anyio's
    task groups, Starlette's ``BaseHTTPMiddleware``, which adds its own "No response
    returned" beside it), or None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, _GROUP):
        for inner in exc.exceptions:
            found = found_in(inner, kind)
            if found is not None:
                return found
    return None


def answering_timeouts(app, worker, routes=None, limit=None):
    """Wrap the ASGI ``app`` for ``worker`` (its registry, log, abort cause): ``routes``,
    the route caps (or None); ``limit``, ``HEARTWORKER_REQUEST_TIMEOUT`` (or None).

    A request that neither applies to costs one ``try`` and two counts (measured in
    ``benchmarks/throughput.py``: a wrapper of ``send`` cost 4-6 us a request)."""
    match = routes.match if routes is not None else None

    async def in_deadlines(scope, receive, send):
        """The app, inside the request's limit and its route's section (anchored here)."""
        method, path, heart = scope["method"], path_info(scope), worker.heart
        here = sys._getframe()
        route = request = None
        _set_request(_current_task())   # (a thread it hands work to works for it: lent.py)
        if limit is not None:       # (first: the route's section is inside the request)
            request = heart.request_begins(f"{method} {path}", here, limit)
        if match is not None:
            rule = match(method, path)
            if rule is not None:
                route = rule.open(heart, here)
        try:
            return await app(scope, receive, send)
        finally:
            if route is not None:
                heart.exit(route)
            if request is not None:
                heart.request_done(request, nothing)
            for ended in (route, request):     # (cancelled by task.cancel(): tasks.py)
                if ended is not None and ended.why is not None:
                    heart.leave_cancelled(ended, sys.exc_info()[1])

    served = app if match is None and limit is None else in_deadlines

    async def app_answering_timeouts(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        worker.requests_begun += 1
        try:
            return await served(scope, receive, send)
        except BaseException as exc:
            cause = cause_of(worker, exc)
            if cause is None:
                raise
            method, path = scope["method"], path_info(scope)
            by_arbiter = found_in(exc, SystemExit) is not None and not worker.guard.aborting
            fix = worker.route_hint(method, path) if worker.abort_outside and \
                cause is worker.abort_cause else ""
            worker.log.warning("heartworker: %s %s ended: %s%s", method, path, cause, fix,
                               exc_info=exc if by_arbiter else None)
            if not await answer_timeout(send, cause):
                raise               # its response had started: uvicorn closes the connection
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
    cancelled = found_in(exc, SectionCapExceeded)
    if cancelled is not None:
        return str(cancelled)
    cause = worker.abort_cause
    if cause is None:
        if found_in(exc, asyncio.CancelledError) is not None and worker.stop_began:
            return (f"the worker's graceful stop ended it (--graceful-timeout "
                    f"{worker.cfg.graceful_timeout:g} s)")     # (uvicorn's drain ended)
        return None
    if found_in(exc, SystemExit) is not None:
        return cause                # this task's code had the loop when the abort came
    if found_in(exc, asyncio.CancelledError) is not None:
        return f"the worker was aborted: {cause}"    # (its loop shuts down)
    return None


async def answer_timeout(send, cause):
    """Send the ``504``; False if the request's response had started (the server refuses
    a second ``http.response.start``: uvicorn raises ``RuntimeError`` before it writes)."""
    body = f"Gateway Timeout: {cause}\n".encode("utf-8")
    try:
        await send({"type": "http.response.start", "status": 504, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close")]})
    except RuntimeError:
        return False
    await send({"type": "http.response.body", "body": body})
    return True
