"""`awstoken status` tells the truth: a leader that is gone shows as gone, the next refresh,
hook failures (recorded by the leader, read by another process); /metrics counts hooks."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import awstoken
from awstoken import CommandHook, FileStorage, Keeper, Token
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.wait import wait_until


def config(tmp_path: Path) -> Path:
    path = tmp_path / "awstoken.toml"
    path.write_text(f"[storage]\ntype = 'file'\npath = '{tmp_path / 'store'}'\n"
                    "[tokens.ecr]\ncommand = 'echo x'\ninterval = '1h'\n")
    return path


def status(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*awstoken_cli(), "status", "-c", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def write_usable(storage: FileStorage, leader: str, generation: int, age: float) -> None:
    """A usable record of ``ecr`` written ``age`` seconds ago by ``leader``."""
    now = time.time()
    storage.write("ecr", Token("Basic c2VjcmV0", expires_at=now + 3600, refreshed_at=now - age,
                               generation=generation, leader=leader))


def test_a_leader_that_is_gone_shows_as_gone(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    storage = FileStorage(tmp_path / "store")
    leader = f"{socket.gethostname()}:{dead_pid()}"
    write_usable(storage, leader, 2, 780)
    table = status(cfg)
    assert table.returncode == 0  # the token itself is still usable
    assert f"{leader} (gone)" in row(table.stdout, "ecr")
    assert "none (no leader)" in row(table.stdout, "ecr")
    data = json.loads(status(cfg, "--json").stdout)["tokens"][0]
    assert data["leader"] == leader and data["leader_alive"] is False
    # A live leader (this test process) is shown plainly.
    alive = f"{socket.gethostname()}:{os.getpid()}"
    write_usable(storage, alive, 3, 60)
    line = row(status(cfg).stdout, "ecr")
    assert alive in line and "(gone)" not in line
    assert "c2VjcmV0" not in table.stdout
    storage.close()


def test_a_running_leader_shows_even_before_it_writes_and_after_a_dead_writer(
        tmp_path: Path) -> None:
    """File storage: the process holding the lock file's flock leads, whoever wrote the
    record. Before, status named the record's writer (gone) and said nobody leads while a
    new leader held the lock and had not refreshed yet."""
    cfg = config(tmp_path)
    storage = FileStorage(tmp_path / "store")
    gone = f"{socket.gethostname()}:{dead_pid()}"
    write_usable(storage, gone, 2, 60)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom awstoken import FileStorage\n"
         f"lease = FileStorage({str(tmp_path / 'store')!r}).acquire('ecr')\n"
         "print('held' if lease else 'busy', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = row(status(cfg).stdout, "ecr")
        assert f"{socket.gethostname()}:{holder.pid}" in line, line
        assert "(gone)" not in line and "no leader" not in line
        data = json.loads(status(cfg, "--json").stdout)["tokens"][0]
        assert data["leader"] == f"{socket.gethostname()}:{holder.pid}"
        assert data["leader_alive"] is True and data["written_by"] == gone
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
    # The holder died: the kernel dropped its flock, and nobody leads.
    line = row(status(cfg).stdout, "ecr")
    assert f"{gone} (gone)" in line and "none (no leader)" in line
    # Status only probes: it never takes the lease, so a rotator can.
    lease = storage.acquire("ecr")
    assert lease is not None
    lease.release()
    storage.close()


def test_status_never_follows_a_planted_lock_file_link(tmp_path: Path) -> None:
    """The storage directory is shared: a lock file replaced by a symbolic link is refused,
    never opened through (the leader is then unknown, and status says so)."""
    cfg = config(tmp_path)
    storage = FileStorage(tmp_path / "store")
    storage.write("ecr", Token("v", refreshed_at=time.time(), generation=1, leader="h:1"))
    target = tmp_path / "elsewhere"
    target.write_text("not a lock\n")
    (tmp_path / "store" / "ecr.lock").symlink_to(target)
    out = status(cfg, "--json")
    data = json.loads(out.stdout)["tokens"][0]
    assert data["leader"] == "h:1" and data["leader_alive"] is None  # cannot tell
    assert target.read_text() == "not a lock\n"
    assert "Traceback" not in out.stderr
    storage.close()


def test_status_shows_the_next_refresh(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    storage = FileStorage(tmp_path / "store")
    now = time.time()
    storage.write("ecr", Token("v", refreshed_at=now - 600, generation=1,
                               leader=f"{socket.gethostname()}:{os.getpid()}"))
    # interval = 1h, refreshed 10 minutes ago: due at now + 3000 s. What is left depends on
    # how long the CLI took to start (seconds on a loaded machine): bound it by the clock.
    data = json.loads(status(cfg, "--json").stdout)["tokens"][0]
    assert now + 3000 - time.time() - 1 <= data["next_refresh_in_seconds"] <= 3000
    assert abs(data["next_refresh_at"] - (now + 3000)) < 1
    line = row(status(cfg).stdout, "ecr")
    shown = [int(m) * 60 + int(s) for m, s in re.findall(r"(\d+)m(\d\d)s", line)]
    assert any(now + 3000 - time.time() - 1 <= left <= 3000 for left in shown), line
    storage.close()


def test_hook_failures_reach_status_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from awstoken.proxy._metrics import TokenCollector

    cfg = config(tmp_path)
    storage = FileStorage(tmp_path / "store")
    keeper = Keeper(storage)
    hook = CommandHook([sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(4)"])
    keeper.rotate("ecr", awstoken.Command(["echo", "hook-secret"]), on_rotate=[hook])
    try:
        # The rotator's thread refreshes once at start (then not for 6 hours).
        def failed_hook() -> Token | None:
            record = storage.read("ecr")
            return record if record is not None and record.hook_failures else None

        record = wait_until(failed_hook, 30, "a failed hook in the record")
        assert record.value == "hook-secret"
        assert record.hook_failures == 1 and "status 4" in (record.hook_error or "")
        line = row(status(cfg).stdout, "ecr")
        assert "hook:" in line and "status 4" in line
        assert json.loads(status(cfg, "--json").stdout)["tokens"][0]["hook_failures"] == 1
        registry = CollectorRegistry()
        registry.register(TokenCollector(keeper, ["ecr"]))
        text = generate_latest(registry).decode()
        assert 'awstoken_token_hook_runs_total{token="ecr"} 1.0' in text
        assert 'awstoken_token_hook_failures_total{token="ecr"} 1.0' in text
        assert "hook-secret" not in text + line
    finally:
        keeper.stop()
        storage.close()
