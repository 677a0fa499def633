"""The mypyc build of the request path: the list it compiles, and (in the compiled run of
scripts/test-compiled.sh) that each of those modules really is compiled."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from awstoken.proxy._compiled import is_compiled, quiet_mypyc_throw, request_path

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


@pytest.mark.skipif(not COMPILED_RUN, reason="the compiled run only (scripts/test-compiled.sh)")
def test_a_compiled_server_ignores_mypyc_throw_warning_even_under_w_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as -W error
        with pytest.raises(DeprecationWarning):
            warnings.warn(MESSAGE, DeprecationWarning, stacklevel=1)
        quiet_mypyc_throw()  # what ProxyServer does
        warnings.warn(MESSAGE, DeprecationWarning, stacklevel=1)  # ignored now
        with pytest.raises(DeprecationWarning, match="something else"):
            warnings.warn("something else", DeprecationWarning, stacklevel=1)


MESSAGE = "the (type, exc, tb) signature of throw() is deprecated, use the single-arg signature instead."
