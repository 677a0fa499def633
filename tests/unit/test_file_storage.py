"""FileStorage: atomic private files, cross-instance visibility, flock leadership."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest

import awstoken
from awstoken import FileStorage, Token
from awstoken._rotation.rotator import Rotator, Schedule
from awstoken._sources.command import FunctionSource
from awstoken._sources.transforms import bearer
from tests.fixtures.faults import read_only


def test_records_are_private_and_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    storage = FileStorage(directory)
    token = Token("Basic abc", expires_at=time.time() + 3600, refreshed_at=time.time(),
                  generation=3, leader="host:1")
    storage.write("ecr", token)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ecr.json").stat().st_mode) == 0o600
    assert FileStorage(directory).read("ecr") == token
    assert [p.name for p in directory.iterdir()] == ["ecr.json"]  # no temp files left


def test_another_instance_sees_a_new_token_within_the_poll(tmp_path: Path) -> None:
    writer = FileStorage(tmp_path, poll=0.1)
    reader = FileStorage(tmp_path, poll=0.1)
    writer.write("ecr", Token("v1", refreshed_at=time.time(), generation=1))
    assert reader.get("ecr") == "v1"
    writer.write("ecr", Token("v2", refreshed_at=time.time(), generation=2))
    deadline = time.monotonic() + 3
    while reader.get("ecr") != "v2" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reader.get("ecr") == "v2"
    reader.close()
    writer.close()


def test_a_missing_token_reads_as_none(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    assert storage.get("nothing") is None
    assert storage.read("nothing") is None


def test_a_corrupt_record_is_a_clear_error_and_read_as_absent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "ecr.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="awstoken"):
        assert FileStorage(tmp_path).read("ecr") is None
    assert re.search(r"token 'ecr' in .*ecr.json: not a valid token record", caplog.text)


def test_leases_are_exclusive_and_freed_on_release(tmp_path: Path) -> None:
    first = FileStorage(tmp_path)
    second = FileStorage(tmp_path)
    lease = first.acquire("ecr")
    assert lease is not None and lease.held()
    assert second.acquire("ecr") is None
    assert second.acquire("other") is not None
    lease.release()
    assert not lease.held()
    again = second.acquire("ecr")
    assert again is not None and again.held()


def test_a_lease_on_a_removed_directory_is_given_up(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    storage = FileStorage(directory)
    lease = storage.acquire("ecr")
    assert lease is not None
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()
    # Another process could now lock a fresh file: the old lease must not count.
    assert not lease.held()


def test_unwritable_storage_keeps_the_token_in_memory(tmp_path: Path) -> None:
    # Root ignores permission bits, so make the directory unusable another way: a regular
    # file takes its place (writes then fail with ENOTDIR for any user).
    directory = tmp_path / "store"
    storage = FileStorage(directory)
    directory.rmdir()
    directory.write_text("not a directory")
    with pytest.raises(awstoken.StorageError, match="cannot write"):
        storage.write("ecr", Token("Basic new", refreshed_at=time.time()))
    assert storage.get("ecr") == "Basic new"
    assert "Basic new" in storage.values.values()
    storage.close()  # its cache thread would log that it cannot revalidate


def test_removed_directory_is_recreated_on_write(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    storage = FileStorage(directory)
    directory.rmdir()
    storage.write("ecr", Token("v", refreshed_at=time.time()))
    assert FileStorage(directory).read("ecr") is not None


def test_default_directory_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWSTOKEN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "awstoken").mkdir(mode=0o777)
    (tmp_path / "awstoken").chmod(0o777)
    with pytest.raises(awstoken.StorageError, match="mode 0700"):
        FileStorage()
    (tmp_path / "awstoken").chmod(0o700)
    assert FileStorage().path == tmp_path / "awstoken"


def test_token_names_are_validated(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    for bad in ["../x", "", ".hidden", "a/b", "x" * 200]:
        with pytest.raises(awstoken.AwstokenError, match="invalid token name"):
            storage.write(bad, Token("v"))


def test_a_read_only_directory_keeps_the_newer_record_until_a_newer_one_lands(
        tmp_path: Path) -> None:
    directory = tmp_path / "store"
    storage = FileStorage(directory)
    storage.write("ecr", Token("Basic old", refreshed_at=time.time(), generation=1))
    with read_only(directory):
        with pytest.raises(awstoken.StorageError, match="cannot write"):
            storage.write("ecr", Token("Basic new", refreshed_at=time.time(), generation=2))
        # The store still holds generation 1; this process knows better and says so.
        record = storage.read("ecr")
        assert record is not None and (record.value, record.generation) == ("Basic new", 2)
        assert storage.get("ecr") == "Basic new"
    # Another process stores a newer record: it wins over what could not be stored.
    FileStorage(directory).write("ecr", Token("Basic newer", refreshed_at=time.time(),
                                              generation=3))
    record = storage.read("ecr")
    assert record is not None and record.value == "Basic newer"
    storage.close()


def test_a_leader_on_read_only_storage_refreshes_once_per_interval(tmp_path: Path) -> None:
    # Regression: the leader re-read the older stored record after a failed write, found
    # the token due again and ran the source in a tight loop (thousands of runs a second).
    directory = tmp_path / "store"
    now = [1000.0]
    storage = FileStorage(directory, clock=lambda: now[0])
    calls = []

    def source() -> str:
        calls.append(now[0])
        return f"tok-{len(calls)}"

    rotator = Rotator("ecr", FunctionSource(source), bearer, storage,
                      schedule=Schedule(interval=60.0), clock=lambda: now[0])
    assert rotator.step() > 0
    assert len(calls) == 1
    with read_only(directory):
        now[0] += 61
        for _ in range(5):
            assert rotator.step() > 0
        assert len(calls) == 2  # one refresh, stored in memory only
        assert storage.get("ecr") == "Bearer tok-2"
        now[0] += 61
        rotator.step()
        assert len(calls) == 3
    rotator.stop()
    storage.close()
