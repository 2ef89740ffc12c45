"""Whose code a frame runs: the app's, the standard library's, Gunicorn's or heartworker's.

A cancellation raised asynchronously lands where its thread is (or at the next
function it enters), so it is sent only while the thread runs the app's own
code or a third-party library's: never inside the standard library, whose
locks (logging's handlers, ``threading.Condition``) would be left held, nor in
Gunicorn's or heartworker's code.  And a request is never ended at its limit
while Gunicorn writes its response, as stock would not end it either.
"""

import os
import sysconfig

import gunicorn

# Code where an asynchronous exception must not land: it takes locks (logging, threading,
# queue...) or writes the response (Gunicorn) between statements that a `try` does not cover.
SERVER = (os.path.dirname(gunicorn.__file__) + os.sep,)
OURS = SERVER + ("<frozen ", os.path.dirname(os.path.abspath(__file__)) + os.sep)
STDLIB = tuple(dict.fromkeys(os.path.dirname(m.__file__) + os.sep for m in (os, sysconfig)))
READING = tuple(os.path.join(SERVER[0], "http", name) for name in ("body.py", "unreader.py"))


def _in_stdlib(name):
    for stdlib in STDLIB:
        if name.startswith(stdlib):
            return "-packages" not in name[len(stdlib):]      # not a site-/dist-packages library
    return False


def _past_libraries(frame, through=()):
    """The innermost frame of ``frame``'s stack that is neither the standard library's (a
    selector waiting for the socket) nor of the packages ``through`` (gevent's sockets)."""
    while frame is not None and (_in_stdlib(frame.f_code.co_filename)
                                 or frame.f_code.co_filename.startswith(through)):
        frame = frame.f_back
    return frame


def in_server_code(frame):
    """Is the thread in Gunicorn's own code, perhaps through the standard library?"""
    frame = _past_libraries(frame)
    return frame is not None and frame.f_code.co_filename.startswith(SERVER)


def writing_response(frame, through=()):
    """Is the thread in Gunicorn's own code writing the response, perhaps through the
    standard library or the packages ``through``?  Not Gunicorn's reading of the
    request's body (``wsgi.input``), which the app asked for: a client that trickles
    its body is the request's own time."""
    frame = _past_libraries(frame, through)
    return frame is not None and frame.f_code.co_filename.startswith(SERVER) and \
        not frame.f_code.co_filename.startswith(READING)


def runs_app_code(frame):
    """Is ``frame`` (a thread's innermost Python frame) the app's, not Python's or Gunicorn's?"""
    if frame is None:
        return False
    name = frame.f_code.co_filename
    return not name.startswith(OURS) and not _in_stdlib(name)
