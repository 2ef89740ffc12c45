"""The status service (issue 24): the arbiter answers probes and dashboards over real HTTP."""

import json
import os
import re
import signal
import socket
import time

import pytest
import requests

from tests.timing import in_background

prometheus_parser = pytest.importorskip("prometheus_client.parser")

BIND = "HEARTWORKER_STATUS_BIND"


def status_url(srv, timeout=15):
    m = srv.wait_for_log(r"status service at (http://\S+)", timeout)
    assert m, srv.log()
    return m.group(1)


def with_status(server, **kw):
    env = dict(kw.pop("env", {}), **{BIND: "127.0.0.1:0"})
    srv = server(env=env, ready=False, **kw)
    return srv, status_url(srv)


def get(url, path):
    return requests.get(url + path, timeout=10)


def wait_until(check, timeout, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def metrics(url):
    text = get(url, "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in prometheus_parser.text_string_to_metric_families(text)
            for s in family.samples}


def raw(url, data, timeout=15, shut=False):
    """Send ``data`` on a plain socket; return what comes back until the server closes."""
    host, port = url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


# -- the probes through a slow startup -----------------------------------------------------
def test_probes_see_a_slow_startup_of_two_workers_and_then_serve(server):
    srv, url = with_status(server, workers=2, env={"APP_STARTUP_PHASES": "1.5,1.5,1.5"})
    ready = get(url, "/readyz")                  # answered before any worker has loaded
    assert ready.status_code == 503 and "no worker has finished its startup" in ready.text
    assert get(url, "/startupz").status_code == 503
    assert get(url, "/livez").status_code == 200 and get(url, "/livez").text == "ok\n"
    noted = wait_until(lambda: "last progress 'phase 1 done'" in get(url, "/readyz").text, 10)
    assert noted, get(url, "/readyz").text            # what is loading, and how far
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15), srv.log()
    assert get(url, "/startupz").status_code == 200
    assert get(url, "/readyz?verbose").text == "[+]workers ok\nreadyz check passed\n"
    status = get(url, "/status").json()
    assert status["arbiter"]["pid"] == srv.proc.pid and status["startup_completed"]
    workers = status["workers"]
    assert len(workers) == 2, workers
    assert wait_until(lambda: {w["phase"] for w in get(url, "/status").json()["workers"]} ==
                      {"serving"}, 10), get(url, "/status").text
    workers = get(url, "/status").json()["workers"]
    assert all(4.0 <= w["startup_took"] < 10 for w in workers), workers
    assert metrics(url)[("heartworker_workers", (("phase", "serving"),))] == 2
    assert srv.get("/pid").status_code == 200


def test_open_sections_and_requests_in_flight_are_shown(every_worker):
    srv = every_worker(timeout=2, env={BIND: "127.0.0.1:0"})
    url = status_url(srv)
    thread, _ = in_background(srv, "/progress?s=4&every=0.3&stall=2&cap=30")

    def section():
        workers = get(url, "/status").json()["workers"]
        return next((w for w in workers if w["sections"]), None)

    worker = wait_until(lambda: (lambda w: w if w and w["sections"][0]["note"] else None)(
        section()), 6)
    assert worker, get(url, "/status").text
    shown = worker["sections"][0]
    assert shown["name"] == "section 'steps'" and shown["cap"] == 30
    assert 0 < shown["elapsed"] < 6 and 0 < shown["left"] <= 2, shown   # (its stall limit)
    assert shown["note"].startswith("step ") and shown["note_age"] < 2.5
    assert worker["in_flight"] == 1
    m = metrics(url)
    assert m[("heartworker_sections_open", (("pid", str(worker["pid"])),))] == 1
    thread.join(15)
    assert wait_until(lambda: not section(), 5), get(url, "/status").text


def test_counters_survive_hup_and_worker_deaths(server):
    srv, url = with_status(server, timeout=2)
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15)
    first = get(url, "/status").json()["workers"][0]["pid"]
    assert srv.get("/section_hang?cap=1").status_code == 504          # one cancellation
    assert wait_until(lambda: get(url, "/status").json()["counts"]["cancel"] == 1, 5)
    os.kill(srv.proc.pid, signal.SIGHUP)                              # a new worker
    assert wait_until(lambda: [w["pid"] for w in get(url, "/status").json()["workers"]
                               if w["phase"] == "serving"] not in ([], [first]), 15), srv.log()
    assert get(url, "/status").json()["counts"]["cancel"] == 1, "the gone worker's counted"
    assert metrics(url)[("heartworker_cancel_total", ())] == 1
    assert get(url, "/startupz").status_code == 200


def test_livez_fails_once_startups_keep_failing(server):
    srv, url = with_status(server, env={"APP_STARTUP_HANG": "1", "HEARTWORKER_STARTUP_CAP": "1",
                                        "HEARTWORKER_LIVEZ_FAILED_STARTUPS": "2"})
    assert get(url, "/livez").status_code == 200
    assert wait_until(lambda: get(url, "/livez").status_code == 503, 20), srv.log()
    body = get(url, "/livez?verbose").text
    assert "[+]ping ok" in body and "[-]startups failed: " in body, body
    assert "HEARTWORKER_LIVEZ_FAILED_STARTUPS=2" in body and "livez check failed" in body
    assert get(url, "/startupz").status_code == 503


# -- bad input ----------------------------------------------------------------------------
def test_garbage_and_other_methods_and_paths_are_answered_and_the_service_lives(server):
    srv, url = with_status(server)
    assert raw(url, b"\x00\xff\xfe garbage \r\n\r\n").startswith(b"HTTP/1.0 400")
    assert raw(url, b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 414")
    many = b"".join(b"X-%d: y\r\n" % i for i in range(200))
    assert raw(url, b"GET /livez HTTP/1.0\r\n" + many + b"\r\n").startswith(b"HTTP/1.0 431")
    huge = b"X: " + b"y" * 70_000 + b"\r\n"
    assert raw(url, b"GET /livez HTTP/1.0\r\n" + huge + b"\r\n").startswith(b"HTTP/1.0 431")
    post = requests.post(url + "/livez", data=b"x", timeout=10)
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"
    assert raw(url, b"BREW /livez HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405")
    assert get(url, "/").status_code == 404 and get(url, "/livez/").status_code == 404
    assert get(url, "/../etc/passwd").status_code == 404
    head = requests.head(url + "/livez", timeout=10)
    assert head.status_code == 200 and head.content == b""
    started = time.monotonic()
    half = raw(url, b"GET /livez HTTP/1.1\r\nHost: x\r\n")      # never finished
    assert half == b"" and time.monotonic() - started < 5 + 3
    assert get(url, "/livez").status_code == 200 and srv.get("/pid").status_code == 200
    assert "Traceback" not in srv.log(), srv.log()


def test_many_idle_connections_do_not_lock_the_probes_out(server):
    srv, url = with_status(server)
    host, port = url.split("//")[1].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
    try:
        started = time.monotonic()
        assert get(url, "/livez").status_code == 200
        assert time.monotonic() - started < 3
        assert srv.get("/pid").status_code == 200, "the app is unaffected"
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_a_trickling_client_is_cut_off(server):
    srv, url = with_status(server)
    host, port = url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        started = time.monotonic()
        try:
            for byte in b"GET /livez HTTP/1.0\r\nX: " + b"y" * 40:
                sock.sendall(bytes([byte]))       # a byte a second: never silent for long
                time.sleep(1.0)
            closed = False
        except OSError:
            closed = True
        if not closed:
            closed = sock.recv(100) == b""
    assert closed and time.monotonic() - started < 10 + 3


# -- where it lives -----------------------------------------------------------------------
def socket_inodes(pid):
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(link[8:-1])
    return found


def listening_inode(port):
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return fields[9]
    return None


def test_the_workers_hold_none_of_its_sockets(server):
    srv, url = with_status(server, workers=2)
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15)
    listener = listening_inode(int(url.rsplit(":", 1)[1]))
    assert listener in socket_inodes(srv.proc.pid)
    host, port = url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10):   # open while HUP forks
        time.sleep(0.3)
        arbiter_sockets = socket_inodes(srv.proc.pid)
        os.kill(srv.proc.pid, signal.SIGHUP)
        assert srv.wait_for_log(r"(?s)Handling signal: hup.*Booting worker.*Booting worker", 15)
        time.sleep(0.5)
        for pid in srv.worker_pids()[-2:]:
            leaked = socket_inodes(pid) & (arbiter_sockets - {listening_inode(srv.port)})
            assert listener not in socket_inodes(pid) and not leaked, (pid, leaked)
            for fd in os.listdir(f"/proc/{pid}/fd"):       # what stands in for them: never
                if int(fd) > 2 and os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.devnull:
                    with open(f"/proc/{pid}/fdinfo/{fd}") as info:     # passed on (exec)
                        flags = int(info.read().split("flags:")[1].split()[0], 8)
                    assert flags & 0o2000000, (pid, fd, "not close-on-exec")
    assert get(url, "/livez").status_code == 200


def test_a_unix_socket(server, tmp_path):
    path = tmp_path / "status.sock"
    srv = server(env={BIND: f"unix:{path}"}, ready=False)
    assert srv.wait_for_log(re.escape(f"status service at unix:{path}"), 15), srv.log()
    sock = socket.socket(socket.AF_UNIX)
    with sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:99999", "unix:", "localhost:"])
def test_a_bad_address_refuses_to_boot_naming_the_setting(server, bind):
    srv = server(env={BIND: bind}, ready=False)
    assert srv.proc.wait(20) != 0
    assert BIND in srv.log() and repr(bind) in srv.log(), srv.log()


def test_a_taken_address_refuses_to_start(server):
    taken = socket.socket()
    with taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        srv = server(env={BIND: bind}, ready=False)
        assert srv.proc.wait(20) != 0
    assert "cannot serve the status service there" in srv.log(), srv.log()


def test_the_launchers_option(server):
    srv = server(program="heartworker", args=["--status-bind", "127.0.0.1:0"], ready=False)
    url = status_url(srv)
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15)
    assert json.loads(get(url, "/status").text)["workers"][0]["phase"] == "serving"
    bad = server(program="heartworker", args=["--status-bind", "nowhere"], ready=False)
    assert bad.proc.wait(20) != 0 and "Error: status_bind (--status-bind" in bad.log()


# -- found by review ----------------------------------------------------------------------
def test_odd_progress_notes_are_published_and_never_stop_the_guard(server):
    srv, url = with_status(server, timeout=2)
    thread, results = in_background(srv, "/chatty_section?s=3")
    seen = set()

    def notes():
        for w in get(url, "/status").json()["workers"]:
            for s in w["sections"]:
                seen.add(s["note"])
        return len(seen) >= 3

    wait_until(notes, 4, every=0.05)
    thread.join(15)
    assert results["/chatty_section?s=3"][0] == 200 and seen
    assert "the guard thread failed" not in srv.log() and "cannot be published" not in srv.log()
    assert wait_until(lambda: not get(url, "/status").json()["workers"][0]["sections"], 5)


def test_a_note_that_cannot_be_printed_is_published_as_such():
    from heartworker.deadline import Section
    from heartworker.publish import describe
    from tests.apps.app import Unprintable

    class Registry:
        limit = float("inf")
        progressed = {None: (11.0, Unprintable())}

    section = Section(Registry(), "chatty", 60.0, 70.0, None, None, 10.0)
    shown = describe(section, Registry(), 12.0)
    assert shown["note"] == "<unprintable Unprintable>" and shown["note_age"] == 1.0
    assert shown["name"] == "section 'chatty'" and shown["left"] == 58.0


def test_a_request_head_over_64_kib_in_all_is_431(server):
    srv, url = with_status(server)
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"y" * 10_000) for i in range(10))   # 100 KB
    assert raw(url, b"GET /livez HTTP/1.0\r\n" + lines + b"\r\n").startswith(b"HTTP/1.0 431")
    assert get(url, "/livez").status_code == 200


def test_a_unix_address_never_takes_a_file_that_is_not_a_socket(server, tmp_path):
    path = tmp_path / "app.conf"
    path.write_text("precious\n")
    srv = server(env={BIND: f"unix:{path}"}, ready=False)
    assert srv.proc.wait(20) != 0
    assert "is not a socket" in srv.log() and path.read_text() == "precious\n", srv.log()


def test_a_routes_cancellation_counts_once(server):
    srv, url = with_status(server, env={"HEARTWORKER_ROUTE_CAPS": "GET /hang=1"})
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15)
    assert srv.get("/hang").status_code == 504
    assert wait_until(lambda: get(url, "/status").json()["counts"]["cancel"] == 1, 5)
    time.sleep(1.2)
    assert get(url, "/status").json()["counts"]["cancel"] == 1


def test_a_usr2_upgrade_waits_for_the_old_arbiters_address(server):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = server(env={BIND: f"127.0.0.1:{port}"}, ready=False, by_address=True)
    url = status_url(srv)
    old = srv.proc.pid
    assert wait_until(lambda: get(url, "/readyz").status_code == 200, 15)
    os.kill(old, signal.SIGUSR2)
    assert srv.wait_for_log(r"starts once it is free", 15), srv.log()
    new = int(re.findall(r"\[(\d+)\] \[WARNING\] heartworker: \S+ is taken", srv.log())[0])
    os.kill(old, signal.SIGTERM)
    assert wait_until(lambda: srv.log().count("status service at") == 2, 15), srv.log()
    assert wait_until(lambda: get(url, "/status").json()["arbiter"]["pid"] == new, 10)
    os.kill(new, signal.SIGTERM)


def test_totals_are_read_with_the_workers_they_count(tmp_path):
    from heartworker.status import Status
    live = {11, 12}
    status = Status(str(tmp_path), 3, "X", worker_pids=lambda: set(live))
    for pid in (11, 12):
        (tmp_path / f"{pid}.status").write_text(json.dumps({
            "pid": pid, "phase": "serving", "written": time.time(), "startup": None,
            "sections": [], "counts": {"cancel": 5}, "startup_took": 1.0, "in_flight": 0}))
    (tmp_path / "13.status.new").write_text("{half")        # a write that never ended
    workers, totals = status.snapshot()
    assert set(workers) == {11, 12} and totals["cancel"] == 10
    live.discard(12)                                         # it dies: folded, not lost
    workers, totals = status.snapshot()
    assert set(workers) == {11} and totals["cancel"] == 10
    assert not (tmp_path / "12.status").exists() and not (tmp_path / "13.status.new").exists()


@pytest.mark.parametrize("count", ["0", "abc", "1e3", "-1"])
def test_a_bad_livez_count_refuses_to_boot_naming_the_setting(server, count):
    srv = server(env={BIND: "127.0.0.1:0", "HEARTWORKER_LIVEZ_FAILED_STARTUPS": count},
                 ready=False)
    assert srv.proc.wait(20) != 0
    assert "HEARTWORKER_LIVEZ_FAILED_STARTUPS" in srv.log() and repr(count) in srv.log(), \
        srv.log()
