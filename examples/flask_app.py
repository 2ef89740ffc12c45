"""A Flask app under heartworker: a slow model load at startup, one long view in a
section, one view without.  From the repository's root:

    .venv/bin/heartworker --chdir examples --timeout 2 --startup-stall 5 flask_app:app

(`bash tests/run.sh` creates .venv with Flask.)  Then:

    curl localhost:8000/predict?s=5   # 200 after 5 s: declared long work, --timeout 2
    curl localhost:8000/quick         # 200 at once
    curl localhost:8000/hang          # 504 after 2 s: outside every section
"""

import os

from flask import Flask, request

from heartworker import long_section

from model import call_upstream_that_hangs, load_model, predict

model = load_model()          # at import: inside the worker's startup section
app = Flask(__name__)


@app.get("/predict")
def predict_view():
    with long_section("predict", cap=60):
        return {"score": predict(model, float(request.args.get("s", 5))), "pid": os.getpid()}


@app.get("/quick")
def quick():
    return {"ok": True, "pid": os.getpid()}


@app.get("/hang")
def hang():
    call_upstream_that_hangs()            # outside every section: ended at --timeout
    return "never"
