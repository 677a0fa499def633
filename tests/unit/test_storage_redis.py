"""RedisStorage pieces that need no server: lazy import, option checks (URL redaction: test_redact)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from awstoken import StorageError
from awstoken.storage.redis import RedisStorage


def test_import_awstoken_does_not_import_redis() -> None:
    code = "import sys, awstoken; print('redis' in sys.modules, awstoken.RedisStorage.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "RedisStorage"]


def test_missing_redis_py_is_a_clear_error() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "import awstoken\n"
            "try:\n"
            "    awstoken.RedisStorage('redis://:pw123@localhost/0')\n"
            "except awstoken.StorageError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'awstoken[redis]'" in out.stdout
    assert "pw123" not in out.stdout + out.stderr


@pytest.mark.parametrize("kwargs", [{"lease": 0}, {"lease": -1.0}, {"poll": 0},
                                    {"lease": 10, "lease_margin": 10}, {"timeout": "1"}])
def test_bad_options_are_rejected(kwargs: dict[str, object]) -> None:
    pytest.importorskip("redis")
    with pytest.raises(StorageError):
        RedisStorage("redis://127.0.0.1:1/0", **kwargs)  # type: ignore[arg-type]


def test_bad_url_names_no_password() -> None:
    pytest.importorskip("redis")
    with pytest.raises(StorageError) as info:
        RedisStorage("http://:hunter22@example/0")
    assert "hunter22" not in str(info.value)
    assert "invalid Redis URL" in str(info.value)
