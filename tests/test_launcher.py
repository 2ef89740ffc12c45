"""The ``heartworker`` launcher: heartworker's settings as real Gunicorn settings (issue 13)."""

import os
import subprocess
import sys

from tests.gunicorn_server import ROOT

SETTINGS = ["--section-cap", "--startup-cap", "--startup-stall", "--cancel-grace",
            "--report-every", "--keep-children", "--request-timeout"]


def test_help_lists_the_settings():
    out = subprocess.run([sys.executable, "-m", "heartworker", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert out.startswith("usage: heartworker")
    for option in SETTINGS:
        assert option in out


def test_the_default_worker_class_is_heartworkers(server):
    srv = server(program="heartworker", worker=None)
    assert "Using worker: heartworker.SyncWorker" in srv.log()
    assert "heartworker: startup took" in srv.log()


def test_a_setting_on_the_command_line_wins_over_the_environment(server):
    srv = server(program="heartworker", args=["--section-cap", "1"],
                 env={"HEARTWORKER_SECTION_CAP": "60"})
    r = srv.get("/section?s=30")                  # a section that gives no cap
    assert r.status_code == 504 and "cap 1 s" in r.text


def test_settings_from_a_conf_file_and_gunicorn_cmd_args(server, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("section_cap = 1\nreport_every = 0\n")
    srv = server(program="heartworker", worker="heartworker.GeventWorker",
                 args=["-c", str(conf)])
    r = srv.get("/section?s=30")
    assert r.status_code == 504 and "cap 1 s" in r.text
    cmd_args = server(program="heartworker", worker="heartworker.ThreadWorker",
                      env={"GUNICORN_CMD_ARGS": "--section-cap 1.5 --threads 2"})
    r = cmd_args.get("/section_busy?s=30")
    assert r.status_code == 504 and "cap 1.5 s" in r.text


def test_an_invalid_setting_refuses_to_start_naming_it(server, tmp_path):
    for args in (["--startup-cap", "abc"], ["--report-every", "-1"]):
        srv = server(program="heartworker", args=args, ready=False)
        assert srv.proc.wait(20) != 0
        name = "startup_cap (--startup-cap" if "--startup-cap" in args else "report_every (--"
        assert f"Error: {name}" in srv.log() and args[1] in srv.log(), srv.log()
    conf = tmp_path / "bad_flag.conf.py"
    conf.write_text("keep_children = 'maybe'\n")           # a flag that is neither
    srv = server(program="heartworker", args=["-c", str(conf)], ready=False)
    assert srv.proc.wait(20) != 0
    assert "keep_children" in srv.log() and "maybe" in srv.log(), srv.log()


def test_plain_gunicorn_does_not_know_the_launchers_settings():
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True,
                         text=True, cwd=ROOT, env=dict(os.environ), check=True).stdout
    assert "--section-cap" not in out
