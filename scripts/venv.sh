# Sourced by the demo and test scripts: a virtualenv with heartworker, gevent and the test tools.
# HEARTWORKER_VENV names it (default .venv), PYTHON the interpreter, HEARTWORKER_PIN extra pins.
VENV="${HEARTWORKER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[gevent,test]' ${HEARTWORKER_PIN:-}
