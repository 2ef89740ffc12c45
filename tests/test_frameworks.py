"""Flask and Django under heartworker: their error handlers catch Exception only, so a
cancelled section reaches the worker and the client gets the 504 (issue 10)."""

import pytest

APPS = [("flask", "tests.apps.flask_app:app"), ("django", "tests.apps.django_app:app")]


@pytest.mark.parametrize("framework,app", APPS)
def test_a_long_view_survives_and_a_stuck_one_is_cancelled_with_504(start, framework, app):
    pytest.importorskip(framework)
    srv = start(app=app)
    pid = srv.get("/pid").text
    r = srv.get("/long?s=3")
    assert r.status_code == 200 and r.text == "done"
    r = srv.get("/export?cap=2")
    assert r.status_code == 504, (r.status_code, r.text)
    assert f"section '{framework} export' ran past its cap" in r.text
    assert srv.get("/pid").text == pid, "the worker and its loaded app live on"
    assert "WORKER TIMEOUT" not in srv.log()
