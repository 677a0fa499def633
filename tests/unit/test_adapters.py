"""The HTTP client adapters' options and imports (their behaviour is tested against a real
server in tests/integration/test_http_adapters.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import awstoken
from awstoken import Keeper, MemoryStorage

httpx_adapter = pytest.importorskip("awstoken.httpx")


@pytest.mark.parametrize(("module", "library", "extra"), [
    ("awstoken.httpx", "httpx", "httpx"), ("awstoken.requests", "requests", "requests"),
    ("awstoken.aiohttp", "aiohttp", "aiohttp")])
def test_adapters_say_which_extra_to_install(module: str, library: str, extra: str) -> None:
    code = (f"import sys; sys.modules[{library!r}] = None\n"
            f"try:\n    import {module}\nexcept ImportError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'awstoken[{extra}]'" in out.stdout


@pytest.mark.parametrize("header", ["", "Bad Header", "X:Y", "X\r\nY", "Ünï"])
def test_header_names_are_checked(header: str) -> None:
    with pytest.raises(awstoken.AwstokenError, match="invalid header name"):
        httpx_adapter.TokenAuth("t", keeper=Keeper(MemoryStorage()), header=header)


@pytest.mark.parametrize("timeout", [-1, "10", True])
def test_refresh_timeout_is_checked(timeout: object) -> None:
    with pytest.raises(awstoken.AwstokenError, match="refresh_timeout"):
        httpx_adapter.TokenAuth("t", keeper=Keeper(MemoryStorage()),
                                refresh_timeout=timeout)


def test_token_names_are_checked() -> None:
    with pytest.raises(awstoken.AwstokenError, match="invalid token name"):
        httpx_adapter.TokenAuth("../etc/passwd", keeper=Keeper(MemoryStorage()))
