"""HTTP/2 (h2c with prior knowledge, where Gunicorn has it): a cancelled stream gets its 504.

Gunicorn's async workers handle each stream's ``Exception``: a cancellation
(``SectionCapExceeded``, a ``BaseException``) ended the whole connection under
gevent, its other streams unanswered.
"""

import socket
import time

import gunicorn
import pytest
from gunicorn.config import KNOWN_SETTINGS

h2 = pytest.importorskip("h2.connection")
from h2.config import H2Configuration  # noqa: E402
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset  # noqa: E402

if not any(setting.name == "http2_cleartext" for setting in KNOWN_SETTINGS):
    pytest.skip(f"Gunicorn {gunicorn.__version__} has no cleartext HTTP/2 "
                f"(--http2-cleartext)", allow_module_level=True)

ARGS = ["--http-protocols", "h2,h1", "--http2-cleartext", "both"]


def exchange(srv, paths, timeout=20):
    """Send each path as a stream of one connection; return {path: (status, body)}."""
    conn = h2.H2Connection(H2Configuration(client_side=True))
    conn.initiate_connection()
    streams = {}
    for n, path in enumerate(paths):
        sid = 2 * n + 1
        streams[sid] = path
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                (":authority", "127.0.0.1")], end_stream=True)
    got = {sid: [None, b""] for sid in streams}
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(conn.data_to_send())
        done, deadline = set(), time.monotonic() + timeout
        while len(done) < len(streams) and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    got[event.stream_id][0] = int(dict(event.headers)[b":status"])
                elif isinstance(event, DataReceived):
                    got[event.stream_id][1] += event.data
                    conn.acknowledge_received_data(len(event.data), event.stream_id)
                elif isinstance(event, StreamReset):
                    got[event.stream_id][0] = "reset"
                    done.add(event.stream_id)
                elif isinstance(event, StreamEnded):
                    done.add(event.stream_id)
            s.sendall(conn.data_to_send())
    return {streams[sid]: tuple(v) for sid, v in got.items()}


@pytest.mark.parametrize("worker", [pytest.param("heartworker.GeventWorker",
                                                 marks=pytest.mark.gevent),
                                    "heartworker.ThreadWorker"])
def test_a_cancelled_stream_gets_its_504_and_the_connections_other_streams_go_on(
        server, worker):
    if "Gevent" in worker:
        pytest.importorskip("gevent")
    args = ARGS + (["--threads", "4"] if "Thread" in worker else [])
    srv = server(worker=worker, timeout=30, args=args,
                 env={"HEARTWORKER_REQUEST_TIMEOUT": "1.5"})
    began = time.monotonic()
    got = exchange(srv, ["/busy?s=20", "/section?s=2&cap=10", "/pid"])
    status, body = got["/busy?s=20"]
    assert status == 504 and b"HEARTWORKER_REQUEST_TIMEOUT (1.5 s)" in body, (got, srv.log())
    assert got["/section?s=2&cap=10"][0] == 200, (got, srv.log())
    assert got["/pid"][0] == 200, (got, srv.log())
    assert time.monotonic() - began < 10
