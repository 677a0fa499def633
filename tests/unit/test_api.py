"""The module-level API (ngx_aws_token's) and the public surface."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import awstoken
from tests.fixtures.wait import wait_until


@pytest.fixture
def module_state(tmp_path: Path) -> Iterator[awstoken.FileStorage]:
    storage = awstoken.FileStorage(tmp_path / "store", poll=0.1)
    awstoken.set_storage(storage)
    yield storage
    awstoken.default_keeper().stop()
    awstoken.set_interval(6 * 3600)
    awstoken.set_retry(30)
    storage.close()


def test_public_api_is_curated() -> None:
    expected = {
        "AwstokenError", "Command", "CommandError", "CommandTimeout", "ConfigError", "Fetched",
        "FileStorage", "FunctionSource", "Keeper", "Lease", "MemoryStorage", "RedisStorage", "Rotator",
        "Schedule", "Source", "SourceError", "Storage", "StorageError", "Token",
        "TokenExpiredError", "TokenValueError", "Transform", "__version__", "basic",
        "basic_auth", "bearer", "create", "default_keeper", "manage", "rotate", "set_interval",
        "set_retry", "set_storage", "set_timeout", "template", "token", "validate_value",
    }
    assert expected <= set(awstoken.__all__)
    for name in awstoken.__all__:
        assert hasattr(awstoken, name), name
    for name in ["CommandError", "ConfigError", "SourceError", "StorageError",
                 "TokenValueError", "TokenExpiredError", "CommandTimeout"]:
        assert issubclass(getattr(awstoken, name), awstoken.AwstokenError)


def test_import_uses_the_standard_library_only() -> None:
    code = ("import sys, awstoken; bad = [m for m in ('botocore', 'boto3', 'redis', 'aiohttp', "
            "'httpx', 'requests') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rotate_returns_at_once_and_token_appears(module_state: awstoken.FileStorage,
                                                   tmp_path: Path) -> None:
    # The command waits (up to 10 s) for a file that is made only after rotate() returns: a
    # rotate() that ran it in the foreground would take the 10 s, however busy the machine.
    go = tmp_path / "go"
    command = (f"for i in $(seq 200); do [ -e '{go}' ] && break; sleep 0.05; done; "
               "printf 'abc\\n'")
    started = time.monotonic()
    awstoken.rotate("slow", command, lambda t: "Basic " + t)
    assert time.monotonic() - started < 5  # the command runs in the background
    assert awstoken.token("slow") is None
    go.touch()
    wait_until(lambda: awstoken.token("slow") is not None)
    assert awstoken.token("slow") == "Basic abc"


def test_manage_refreshes_once_into_storage(module_state: awstoken.FileStorage) -> None:
    assert awstoken.manage("m", "echo one", "Bearer {token}") == "Bearer one"
    assert awstoken.token("m") == "Bearer one"
    record = module_state.read("m")
    assert record is not None and record.generation == 1
    assert awstoken.manage("m", "echo two", "Bearer {token}") == "Bearer two"
    assert awstoken.token("m") == "Bearer two"
    with pytest.raises(awstoken.CommandError, match="status 1"):
        awstoken.manage("m", "exit 1")
    assert awstoken.token("m") == "Bearer two"  # the previous token stays


def test_create_stores_nothing(module_state: awstoken.FileStorage) -> None:
    assert awstoken.create(["echo", "x"], awstoken.bearer) == "Bearer x"
    assert list(module_state.path.iterdir()) == []


def test_set_interval_and_retry_apply_to_rotate(module_state: awstoken.FileStorage,
                                                tmp_path: Path) -> None:
    counter = tmp_path / "count"
    awstoken.set_interval(0.3)
    awstoken.set_retry(5)
    rotator = awstoken.rotate("fast", f"echo x >> {counter}; wc -l < {counter}")
    assert rotator.schedule.interval == 0.3 and rotator.schedule.retry == 5
    wait_until(lambda: counter.exists() and len(counter.read_text().splitlines()) >= 3)
    with pytest.raises(awstoken.AwstokenError, match="interval must be a positive"):
        awstoken.set_interval(0)
    with pytest.raises(awstoken.AwstokenError, match="retry must be a positive"):
        awstoken.set_retry(-1)


def test_rotate_again_replaces_the_rotator(module_state: awstoken.FileStorage) -> None:
    first = awstoken.rotate("r", "echo a")
    second = awstoken.rotate("r", "echo b")
    assert not first.running and second.running
    assert awstoken.default_keeper().rotators["r"] is second


def _group_gone(pgid: int) -> bool:
    """Whether no process is left in the process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("wait_for_command", [True, False])
def test_a_program_using_rotate_exits_normally(tmp_path: Path, wait_for_command: bool) -> None:
    pidfile = tmp_path / "command.pid"
    # The command records its pid: with its own session, that is its process group too.
    command = f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; sleep 30; echo late"
    wait = (f"import os, time\nwhile not os.path.exists({str(pidfile)!r}): time.sleep(0.01)\n"
            if wait_for_command else "")
    code = (f"import awstoken; awstoken.set_storage(awstoken.FileStorage({str(tmp_path)!r}))\n"
            f"awstoken.rotate('x', {command!r})\n{wait}print('main done')\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "main done"
    assert time.monotonic() - started < 10
    if not pidfile.exists():
        assert not wait_for_command
        return  # the program exited before its command started: none may start after
    # The command still running at exit was killed with its whole process group (the
    # shell and its sleep): this test's own command only, not the machine's process list.
    wait_until(lambda: _group_gone(int(pidfile.read_text())), 10,
               "the command's process group gone with its program")
