#!/usr/bin/env bash
# The offline demo: creates .venv if missing, installs awstoken, runs `python -m awstoken.demo` (awstoken serve in front of a stand-in registry).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[proxy]'
exec .venv/bin/python -m awstoken.demo "$@"
