"""What a process forked by a worker keeps of it: nothing that serves clients, no life after it.

A child forked from a worker (a ``multiprocessing`` fork pool, a plain
``os.fork()``) inherits every descriptor of the worker: its listening sockets
and the connections of its clients in flight.  The kernel closes a connection
only when its last descriptor goes, so while such a child lives, the client of
a worker that died waits for the child, not for the worker, and the port stays
bound after the server stopped (a restart fails with "address already in use").
Stock Gunicorn has the same hole.

So, in the child, before any of its own code runs (``os.register_at_fork``):

* **The worker's sockets are released.**  Every socket on one of the worker's
  listening addresses (the listeners, and each connection accepted on them: a
  connection's local address is its listener's) is replaced by ``/dev/null``
  with ``dup2``.  The descriptor number stays valid, so the child's copies of
  the Python socket objects close nothing of anyone else's, and a child that
  uses one gets an error, not a client.  The child's other descriptors (pipes,
  its own connections, a database's) are left alone.
* **The child ends with the worker** (``PR_SET_PDEATHSIG``: ``SIGKILL`` when the
  worker ends, a graceful exit or a recycle included) if a thread that serves
  forked it: the serving thread, or a request thread of the threaded worker.
  The kernel sends the signal when the *thread* that forked the child ends, so
  a child forked by another thread of the application's is left alone.

``HEARTWORKER_KEEP_CHILDREN=1`` (the launcher's ``--keep-children``) turns both
off, as in stock Gunicorn: for an application whose children are meant to
outlive their worker, or that hands a client's connection to a child on purpose.

A program started by ``subprocess`` is not concerned: the fork made to start it
(for a ``preexec_fn``; under gevent, for every program) is skipped, since the
program may be meant to run on its own, and ``close_fds`` (the default) closes
the worker's descriptors anyway.
Without ``/proc`` only the listeners themselves are released.  The hook costs
about 10 µs per open descriptor of the worker (3 ms with 300), in each child.
"""

import _socket
import ctypes
import ctypes.util
import os
import signal
import socket
import stat
import sys

PR_SET_PDEATHSIG = 1
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_RealSocket = _socket.socket   # gevent patches ``socket.socket``, never ``_socket.socket``


def listening_addresses(sockets):
    """The worker's listening addresses: {(family, port or path)} for a listener on every
    interface, {(family, address, port)} for one on a given address."""
    addresses = set()
    for sock in sockets:
        try:
            family, name = sock.family, sock.getsockname()
        except (OSError, AttributeError):
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            host = name[0]
            wildcard = host in ("0.0.0.0", "::")
            addresses.add((family, name[1]) if wildcard else (family, host, name[1]))
        elif family == socket.AF_UNIX and name:
            addresses.add((family, name))
    return addresses


def is_theirs(family, name, addresses):
    """Is a socket of ``family`` whose local address is ``name`` on one of ``addresses``?
    (A connection accepted on a listener has the listener's local address.)"""
    if family in (socket.AF_INET, socket.AF_INET6):
        return (family, name[1]) in addresses or (family, name[0], name[1]) in addresses
    return family == socket.AF_UNIX and bool(name) and (family, name) in addresses


def release_sockets(addresses, listeners=(), fd_dir="/proc/self/fd"):
    """Point every socket on one of ``addresses`` at /dev/null; return how many.
    (Without ``fd_dir``, only the descriptors in ``listeners``.)

    Run in a child just forked, which has a single thread.  Each socket is
    looked at through a ``_socket.socket`` on its descriptor, detached before it
    could close anything; a default timeout is cleared first, so that making the
    object never changes the blocking mode of the worker's own socket.
    """
    try:
        fds = [int(name) for name in os.listdir(fd_dir)]
    except OSError:
        fds = list(listeners)
    default_timeout = _socket.getdefaulttimeout()
    _socket.setdefaulttimeout(None)
    devnull = os.open(os.devnull, os.O_RDWR)
    released = 0
    try:
        for fd in fds:
            if fd != devnull and _theirs(fd, addresses):
                os.dup2(devnull, fd)
                released += 1
    finally:
        os.close(devnull)
        _socket.setdefaulttimeout(default_timeout)
    return released


def _theirs(fd, addresses):
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = _RealSocket(fileno=fd)
    except OSError:
        return False
    try:
        if sock.family not in _STREAM_FAMILIES or sock.type != socket.SOCK_STREAM:
            return False
        return is_theirs(sock.family, sock.getsockname(), addresses)
    except OSError:
        return False
    finally:
        sock.detach()


def _load_prctl():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def in_subprocess(frame):
    """Is ``frame``'s stack ``subprocess`` starting a program?  (The standard library's
    forks there only for a ``preexec_fn``; gevent's, for every program.)"""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_execute_child" and frame.f_globals.get("__name__") in \
                ("subprocess", "gevent.subprocess"):
            return True
        frame = frame.f_back
    return False


class Children:
    """The at-fork child hook of one worker process."""

    def __init__(self, sockets, serving):
        self.addresses = listening_addresses(sockets)
        self.listeners = []
        for sock in sockets:
            try:
                self.listeners.append(sock.fileno())
            except (OSError, AttributeError):
                continue
        self.serving = serving          # () -> does the current thread serve requests?
        self.prctl = _load_prctl()      # loaded here, not in each child
        self.worker_pid = os.getpid()
        self.active = True

    def install(self):
        os.register_at_fork(after_in_child=self.in_child)

    def in_child(self):
        """In a child forked from the worker (its only thread: the one that forked)."""
        if not self.active or os.getpid() == self.worker_pid:
            return
        self.active = False             # (the child's own children are not the worker's)
        if in_subprocess(sys._getframe(1)):
            return
        release_sockets(self.addresses, self.listeners)
        if self.prctl is not None and self.serving():
            self.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != self.worker_pid:   # the worker died before the prctl
                os.kill(os.getpid(), signal.SIGKILL)
