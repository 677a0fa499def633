#!/usr/bin/env bash
# Run the whole test suite: creates a venv if missing, installs the package with its extras
# and the test dependencies, then lints, type-checks and runs pytest. Extra arguments go to
# pytest. PYTHON=python3.13 (or a path) runs it on that interpreter, in .venv-3.13.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv=${VENV:-.venv-$version}
else
  python=python3
  venv=${VENV:-.venv}
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[aws,redis,proxy]' -r requirements-test.txt
"$venv/bin/ruff" check src tests bench
"$venv/bin/mypy"
# The aws CLI the tests run is the venv's own.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest "$@"
