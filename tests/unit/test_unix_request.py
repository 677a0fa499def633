"""The tests' HTTP client over a unix socket (tests/fixtures/nginx.request)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tests.fixtures.nginx import request


def test_a_refused_unix_request_leaves_no_socket_open(tmp_path: Path) -> None:
    # A leaked socket warns (ResourceWarning) only when collected, as an unraisable
    # exception that pytest turns into a failure of this test when it happens here.
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            request(str(tmp_path / "nobody-listens.sock"), "GET", "/token/ecr", timeout=2)
    gc.collect()
