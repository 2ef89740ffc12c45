"""A process forked by a worker keeps none of its sockets and ends with it (issue 25).

Each test failed before: the child held the worker's listening socket and the
client's connection, the client of a dead worker waited for the child, and the
child outlived the worker, holding the port after the server stopped.
"""

import contextlib
import os
import signal
import socket
import time

import pytest

from tests.gunicorn_server import pid_alive
from tests.timing import in_background, killed, timed_get, wait_dead

TIMEOUT = 2
MARGIN = 3.0
CHILD_SLEEPS = 20


def sockets_of(pid):
    """The socket descriptors process ``pid`` holds."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                found.append(int(fd))
        except OSError:
            continue
    return found


def sockets_released(pid, timeout=2):
    """Wait for the child's at-fork hook to have run (it may not have been scheduled yet
    when its parent answered); return whether it holds no socket."""
    deadline = time.monotonic() + timeout
    while sockets_of(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sockets_of(pid) == []


def port_is_free(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def kill(pid):
    try:
        os.kill(pid, 9)
    except OSError:
        pass


@contextlib.contextmanager
def forked_child(srv, path="/fork_child"):
    """The pid of a child (or program) the worker starts for ``path``; killed at the end."""
    child = int(srv.get(f"{path}?s={CHILD_SLEEPS}").text)
    try:
        yield child
    finally:
        kill(child)


def kill_the_worker(srv):
    os.kill(srv.worker_pids()[0], 9)      # the worker dies (as the arbiter kills it)


def test_a_child_forked_in_a_request_keeps_no_socket_and_ends_with_its_worker(every_worker):
    srv = every_worker(timeout=TIMEOUT)
    with forked_child(srv) as child:
        assert pid_alive(child)
        assert sockets_released(child), "neither the listener nor the client's connection"
        kill_the_worker(srv)
        assert wait_dead(child, 2), "the child ended with its worker"


def test_the_port_is_free_once_the_server_stopped(server):
    srv = server(timeout=TIMEOUT)
    with forked_child(srv) as child:
        srv.proc.send_signal(signal.SIGTERM)     # `kill <arbiter>`: its group lives on
        srv.proc.wait(10)
        time.sleep(0.5)
        assert not pid_alive(child), "it ended with its worker"
        assert port_is_free(srv.port), "no process holds the port"


@pytest.mark.gevent
def test_every_client_of_an_aborted_gevent_worker_gets_an_answer_or_a_close_at_once(server):
    # One greenlet forks a child and waits; another blocks the hub outside every
    # section, and the arbiter kills the worker at --timeout. The waiting greenlet's
    # client waited for the child (20 s), which held its connection.
    pytest.importorskip("gevent")
    srv = server(worker="heartworker.GeventWorker", timeout=TIMEOUT)
    results = {}
    waiting, _ = in_background(srv, f"/fork_child_then_wait?s={CHILD_SLEEPS}", results)
    time.sleep(0.5)
    blocking, _ = in_background(srv, "/busy?s=30", results)
    for thread in (waiting, blocking):
        thread.join(TIMEOUT + MARGIN + 2)
    assert not waiting.is_alive() and not blocking.is_alive(), "both answered or closed"
    assert len(results) == 2 and all(killed(status) for status, _ in results.values()), results


@pytest.mark.parametrize("worker", ["heartworker.GeventWorker"])
def test_a_fork_pool_in_a_gevent_request_does_not_hold_its_client(server, worker):
    # The case of issue 25: a fork pool's child inherited the connection of a client
    # whose greenlet then blocked the hub; the client waited 20 s after the worker died.
    pytest.importorskip("gevent")
    srv = server(worker=worker, timeout=TIMEOUT)
    began = time.monotonic()
    status, took = timed_get(srv, f"/fork_pool_then_block?s={CHILD_SLEEPS}")
    assert killed(status) and took < TIMEOUT + MARGIN, (status, took)
    assert srv.wait_for_log("WORKER TIMEOUT", timeout=5)
    assert time.monotonic() - began < TIMEOUT + MARGIN + 5


@pytest.mark.parametrize("how", ["--keep-children", "HEARTWORKER_KEEP_CHILDREN=1"])
def test_keep_children_leaves_children_as_stock_gunicorn_does(server, how):
    # For an app whose children are meant to outlive their worker, or that hands a
    # client's connection to a child on purpose.
    if how.startswith("--"):
        srv = server(program="heartworker", args=[how], timeout=TIMEOUT)
    else:
        srv = server(timeout=TIMEOUT, env=dict([how.split("=")]))
    with forked_child(srv) as child:
        time.sleep(0.3)
        assert sockets_of(child), "it keeps what it inherited"
        kill_the_worker(srv)
        time.sleep(0.5)
        assert pid_alive(child), "it outlives its worker"


def test_a_program_started_by_subprocess_is_left_alone(each_worker):
    # CPython runs the at-fork hooks in a child made for a preexec_fn, and gevent's
    # subprocess forks with os.fork for every program: the program (maybe meant to run
    # on its own: preexec_fn=os.setsid) must not get PDEATHSIG.
    srv = each_worker(timeout=TIMEOUT)
    with forked_child(srv, "/spawn_detached") as program:
        kill_the_worker(srv)
        time.sleep(0.5)
        assert pid_alive(program), "it outlives its worker"
