#!/usr/bin/env bash
# Run the whole test suite: creates a venv if missing, installs the package with its extras
# and the test dependencies, then lints, type-checks and runs pytest, in parallel. Extra
# arguments go to pytest. PYTHON=python3.13 (or a path) runs it on that interpreter, in .venv-3.13.
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
# Compiled bytecode is kept (some environments set PYTHONDONTWRITEBYTECODE): every xdist
# worker imports the test modules (pytest rewrites their asserts: seconds per worker) and
# hundreds of awstoken processes the tests start import the package, each compiling it from
# source again without it (docs/testing.md).
unset PYTHONDONTWRITEBYTECODE
# In parallel by default (pytest-xdist; pyproject's --dist loadgroup keeps grouped tests in
# one worker): AWSTOKEN_TEST_WORKERS workers, else three per CPU, chosen by measurement (most
# tests wait on processes and sockets: on 2 CPUs, 6 workers took 127 s idle and 159-160 s
# under two CPU burners, 4 took 137 s and 181-193 s; docs/testing.md). An -n of the
# caller's wins (-n 0: one process).
workers=${AWSTOKEN_TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 2) * 3 ))}
# The aws CLI the tests run is the venv's own.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest -n "$workers" "$@"
