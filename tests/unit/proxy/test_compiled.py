"""The mypyc build of the request path: the list it compiles, and (in the compiled run of
scripts/test-compiled.sh) that each of those modules really is compiled."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from awstoken.proxy._compiled import is_compiled, request_path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
from compile_tree import compiled_modules  # noqa: E402  bench/ is not a package

COMPILED_RUN = os.environ.get("AWSTOKEN_EXPECT_COMPILED") == "1"


def _dotted(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def test_the_build_hook_names_modules_that_exist() -> None:
    modules = compiled_modules()
    assert modules and all((ROOT / module).is_file() for module in modules), modules
    assert "awstoken.proxy._h1.inbound" in map(_dotted, modules)  # what request_path() reads


@pytest.mark.skipif(not COMPILED_RUN, reason="the compiled run only (scripts/test-compiled.sh)")
def test_every_listed_module_is_compiled() -> None:
    interpreted = [_dotted(m) for m in compiled_modules() if not is_compiled(_dotted(m))]
    assert interpreted == []
    assert request_path() == "compiled"


@pytest.mark.skipif(COMPILED_RUN, reason="the plain run only")
def test_the_plain_install_runs_the_same_modules_interpreted() -> None:
    # A compiled build in place leaves .so files beside the sources, which then shadow
    # every edit of them: this catches it.
    compiled = [_dotted(m) for m in compiled_modules() if is_compiled(_dotted(m))]
    assert compiled == [], "stale compiled modules: `find src -name '*.so' -delete`"
    assert request_path() == "interpreted"
