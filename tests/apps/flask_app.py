"""A Flask app for the tests: its error handler catches Exception, as real apps' do."""

import os
import time

from flask import Flask, request

from heartworker import long_section

app = Flask(__name__)


@app.errorhandler(Exception)
def any_error(exc):          # never sees SectionCapExceeded (a BaseException)
    return "the app's own error page", 500


@app.get("/pid")
def pid():
    return str(os.getpid())


@app.get("/long")
def long():
    with long_section("flask long", cap=30):
        time.sleep(float(request.args.get("s", 3)))
    return "done"


@app.get("/export")
def export():
    with long_section("flask export", cap=float(request.args.get("cap", 2))):
        while True:
            time.sleep(3600)
