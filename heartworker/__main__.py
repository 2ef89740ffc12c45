"""``python -m heartworker [gunicorn options] app:app``: the ``heartworker`` launcher."""

from .launcher import run

run("heartworker")
