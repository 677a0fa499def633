"""Files another user controls (issue 10): storage directories, records, lock files, sinks.

The attacks: a storage or sink directory owned by another user or writable by others (or
under such a parent), symlinks planted for a lock file, a record, a refresh request or a
sink, a record owned by someone else, and the storage directory swapped while a process
runs. Several need root to play the other user (``chown`` to 65534, ``nobody``); CI runs
as root, elsewhere those skip.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import awstoken
from awstoken import FileSink, FileStorage, HookError, Token
from awstoken._fs import check_tree
from awstoken._rotation.rotator import Rotator
from awstoken._sources.command import Fetched, FunctionSource
from awstoken._sources.transforms import bearer

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays another user with chown (root)")
PLANTED = {"value": "Bearer planted-token-0001", "expires_at": None,
           "refreshed_at": time.time(), "generation": 7, "leader": "evil:1"}


def _mkdir(path: Path, mode: int = 0o700, uid: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


# -- the storage directory ---------------------------------------------------------------

@as_root
def test_a_storage_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    store = _mkdir(tmp_path / "store", uid=NOBODY)
    with pytest.raises(awstoken.StorageError, match=rf"storage directory {store}: the "
                       rf"directory is owned by uid {NOBODY}, not root"):
        FileStorage(store)


@pytest.mark.parametrize(("mode", "who"), [(0o777, "others"), (0o770, "its group"),
                                           (0o722, "others")])
def test_a_storage_directory_writable_by_others_is_refused(tmp_path: Path, mode: int,
                                                           who: str) -> None:
    store = _mkdir(tmp_path / "store", mode)
    with pytest.raises(awstoken.StorageError, match=rf"{store}: the directory is writable by "
                       rf"{who} \(mode {mode:04o}\)"):
        FileStorage(store)


@as_root
def test_a_storage_directory_under_another_users_directory_is_refused(tmp_path: Path) -> None:
    evil = _mkdir(tmp_path / "evil", 0o755, uid=NOBODY)
    store = _mkdir(evil / "store")
    with pytest.raises(awstoken.StorageError, match=rf"{store}: its parent {evil} is owned by "
                       rf"uid {NOBODY}"):
        FileStorage(store)


def test_a_storage_directory_under_a_group_writable_parent_is_refused(tmp_path: Path) -> None:
    shared = _mkdir(tmp_path / "shared", 0o775)
    with pytest.raises(awstoken.StorageError, match=rf"its parent {shared} is writable by its "
                       "group"):
        FileStorage(shared / "store")


def test_a_storage_directory_in_a_sticky_shared_directory_is_fine(tmp_path: Path) -> None:
    shared = _mkdir(tmp_path / "shared", 0o1777)
    storage = FileStorage(shared / "store")
    storage.write("ecr", Token("Bearer fine-token-0001", refreshed_at=time.time()))
    assert FileStorage(shared / "store").get("ecr") == "Bearer fine-token-0001"


@as_root
def test_the_default_directory_under_another_users_runtime_dir_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _mkdir(tmp_path / "run-user", 0o700, uid=NOBODY)
    _mkdir(runtime / "awstoken")  # ours, inside theirs: they can swap it at will
    monkeypatch.delenv("AWSTOKEN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(awstoken.StorageError, match=rf"its parent {runtime} is owned by uid "
                       rf"{NOBODY}.*set AWSTOKEN_DIR"):
        FileStorage()


def test_check_tree_accepts_root_owned_parents(tmp_path: Path) -> None:
    assert check_tree(tmp_path).st_uid == os.geteuid()


# -- files inside it ---------------------------------------------------------------------

def test_a_planted_lock_file_symlink_is_refused_and_not_followed(tmp_path: Path) -> None:
    store = _mkdir(tmp_path / "store")
    storage = FileStorage(store)
    victim = tmp_path / "created-through-the-link"
    (store / "ecr.lock").symlink_to(victim)
    secret = tmp_path / "root-only"
    secret.write_text("root only")
    secret.chmod(0o600)
    before = secret.stat()
    (store / "pypi.lock").symlink_to(secret)
    for name in ("ecr", "pypi"):
        with pytest.raises(awstoken.StorageError, match=rf"token '{name}': refusing the lock "
                           rf"file {store}/{name}.lock: a symbolic link"):
            storage.acquire(name)
    assert not victim.exists()
    after = secret.stat()
    assert (after.st_mtime_ns, after.st_size, secret.read_text()) == (
        before.st_mtime_ns, before.st_size, "root only")


def test_a_planted_record_symlink_is_not_served_and_is_replaced_not_written_through(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _mkdir(tmp_path / "store")
    target = tmp_path / "planted.json"
    target.write_text(json.dumps(PLANTED))
    (store / "ecr.json").symlink_to(target)
    storage = FileStorage(store, poll=3600)
    with caplog.at_level(logging.WARNING, logger="awstoken"):
        assert storage.get("ecr") is None
    assert any("a symbolic link" in r.getMessage() and "ecr.json" in r.getMessage()
               for r in caplog.records)
    rotator = Rotator("ecr", FunctionSource(lambda: "fresh-token-0001"), bearer, storage)
    rotator.step()
    rotator.stop()
    assert storage.get("ecr") == "Bearer fresh-token-0001"
    assert not (store / "ecr.json").is_symlink()
    assert json.loads(target.read_text()) == PLANTED  # the link was replaced, not followed


@as_root
def test_a_record_owned_by_another_user_is_not_served(tmp_path: Path) -> None:
    store = _mkdir(tmp_path / "store")
    record = store / "ecr.json"
    record.write_text(json.dumps(PLANTED))
    os.chown(record, NOBODY, NOBODY)
    assert FileStorage(store).get("ecr") is None


def test_a_planted_refresh_request_symlink_is_refused(tmp_path: Path) -> None:
    store = _mkdir(tmp_path / "store")
    target = tmp_path / "touched"
    (store / "ecr.refresh").symlink_to(target)
    storage = FileStorage(store)
    with pytest.raises(awstoken.StorageError, match=r"ecr\.refresh: a symbolic link"):
        storage.request_refresh("ecr")
    assert not target.exists()
    assert storage.refresh_requested("ecr") == 0.0


@as_root
def test_a_directory_swapped_mid_run_does_not_move_the_process(tmp_path: Path) -> None:
    store = _mkdir(tmp_path / "store")
    storage = FileStorage(store, poll=3600)
    storage.write("ecr", Token("Bearer ours-token-0001", refreshed_at=time.time(),
                               generation=1))
    lease = storage.acquire("ecr")
    assert lease is not None
    # Another user renames ours away and puts theirs, with a planted record, in its place.
    store.rename(tmp_path / "moved")
    planted = _mkdir(tmp_path / "store")
    (planted / "ecr.json").write_text(json.dumps(PLANTED))
    os.chown(planted / "ecr.json", NOBODY, NOBODY)
    os.chown(planted, NOBODY, NOBODY)
    record = storage.read("ecr")
    assert record is not None and record.value == "Bearer ours-token-0001"
    assert lease.held()  # still the lock file in our directory
    storage.write("ecr", Token("Bearer ours-token-0002", refreshed_at=time.time(),
                               generation=2))
    assert json.loads((tmp_path / "moved" / "ecr.json").read_text())["generation"] == 2
    assert json.loads((planted / "ecr.json").read_text()) == PLANTED
    # A process starting now is refused the planted directory.
    with pytest.raises(awstoken.StorageError, match=f"owned by uid {NOBODY}"):
        FileStorage(store)
    lease.release()


@as_root
def test_a_directory_removed_and_replaced_by_another_users_fails_closed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _mkdir(tmp_path / "store")
    storage = FileStorage(store, poll=3600)
    store.rmdir()
    planted = _mkdir(tmp_path / "store")
    (planted / "ecr.json").write_text(json.dumps(PLANTED))
    os.chown(planted / "ecr.json", NOBODY, NOBODY)
    os.chown(planted, NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="awstoken"):
        assert storage.get("ecr") is None
        assert storage.get("ecr") is None
    refusals = [r.getMessage() for r in caplog.records if f"owned by uid {NOBODY}" in r.getMessage()]
    assert len(refusals) == 1, refusals
    with pytest.raises(awstoken.StorageError, match=f"owned by uid {NOBODY}"):
        storage.write("ecr", Token("Bearer ours-token-0003", refreshed_at=time.time()))
    assert json.loads((planted / "ecr.json").read_text()) == PLANTED


def test_an_unreadable_directory_reads_as_no_token_and_logs_once(tmp_path: Path) -> None:
    # Issue 13: token() raised a traceback. Root reads anything: as root the process runs
    # without the capabilities that bypass permission bits (setpriv, util-linux).
    store = _mkdir(tmp_path / "store")
    code = textwrap.dedent(f"""
        import logging, os, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(message)s")
        import awstoken
        storage = awstoken.FileStorage({str(store)!r})
        os.chmod({str(store)!r}, 0)
        print("first", storage.get("ecr"))
        print("second", awstoken.Keeper(storage).token("ecr"))
    """)
    caps = "-dac_override,-dac_read_search"
    prefix = (["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
              if os.geteuid() == 0 else [])
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                             text=True, timeout=60)
    finally:
        store.chmod(0o700)
    assert out.returncode == 0, out.stderr
    assert "first None" in out.stdout and "second None" in out.stdout
    logs = [line for line in out.stdout.splitlines() if line.startswith("LOG")]
    assert len(logs) == 1 and "Permission denied" in logs[0] and str(store) in logs[0], out.stdout
    assert "Traceback" not in out.stderr


# -- sinks -------------------------------------------------------------------------------

def _sink(path: Path) -> None:
    FileSink(path)("ecr", Fetched("sink-token-0001"), Token("Bearer sink-token-0001",
                                                            generation=1))


@as_root
def test_a_sink_in_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = _mkdir(tmp_path / "theirs", 0o755, uid=NOBODY)
    with pytest.raises(HookError, match=rf"file sink {theirs}/token: refused: {theirs}: the "
                       rf"directory is owned by uid {NOBODY}"):
        _sink(theirs / "token")
    assert list(theirs.iterdir()) == []


def test_a_sink_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = _mkdir(tmp_path / "shared", 0o777)
    with pytest.raises(HookError, match="writable by others"):
        _sink(shared / "token")
    assert list(shared.iterdir()) == []


def test_a_sink_behind_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    sinks = _mkdir(tmp_path / "sinks")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (sinks / "token").symlink_to(victim)
    with pytest.raises(HookError, match=rf"{sinks}/token: a symbolic link; refusing"):
        _sink(sinks / "token")
    assert victim.read_text() == "keep me" and (sinks / "token").is_symlink()
    assert [p.name for p in sinks.iterdir()] == ["token"]  # no temporary left behind


def test_a_sink_in_a_directory_of_ours_works(tmp_path: Path) -> None:
    _sink(tmp_path / "new" / "dir" / "token")
    assert (tmp_path / "new" / "dir" / "token").read_text() == "Bearer sink-token-0001"
