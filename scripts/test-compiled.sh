#!/usr/bin/env bash
# The request path compiled with mypyc (pyproject.toml's build hook), tested as users get
# it: a wheel built with HATCH_BUILD_HOOK_ENABLE_MYPYC=true, installed (not editable) in
# .venv-compiled, then the proxy's tests run against that install. Arguments go to pytest
# (default: the proxy's tests and the serve process tests). PYTHON=python3.X picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv-compiled}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# Built from a copy: an in-place build leaves .so files beside the sources, which would
# shadow later edits of them in the working tree.
git ls-files -z | xargs -0 cp --parents -t "$build"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-test.txt
HATCH_BUILD_HOOK_ENABLE_MYPYC=true "$venv/bin/python" -m pip wheel -q --disable-pip-version-check \
  --no-deps -w "$build/dist" "$build"
wheel=$(ls "$build"/dist/awstoken-*.whl)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel[aws,redis,proxy]"
workers=$(( $(nproc) * 2 ))
if [ $# -eq 0 ]; then
  set -- tests/unit/proxy tests/integration/proxy tests/integration/nginx \
    tests/integration/test_restart.py tests/integration/test_multiprocess.py
fi
AWSTOKEN_EXPECT_COMPILED=1 PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest -n "$workers" "$@"
