# Sourced by the demo and test scripts: a virtualenv with heartworker, gevent and the test tools.
VENV="${HEARTWORKER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[gevent,test]'
