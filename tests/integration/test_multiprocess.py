"""Many real processes rotating one token on a FileStorage: one runs the command."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import awstoken
from tests.fixtures import processes

WORKER = Path(__file__).with_name("rotate_worker.py")


def start_workers(n: int, directory: Path, interval: float, command: str,
                  out: Path, *extra: str) -> list[subprocess.Popen[bytes]]:
    # Their output (logs) goes to a file the leak guard reads; ``out`` holds what they read.
    return [processes.start_logged([sys.executable, str(WORKER), str(directory), str(interval),
                                    command, str(out), *extra], out.with_name("workers.log"))
            for _ in range(n)]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for proc in running:
        proc.kill()
        proc.wait()


def runs(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def last_reads(out: Path) -> dict[int, str]:
    seen: dict[int, str] = {}
    for line in out.read_text().splitlines():
        pid, _, value = line.partition(" ")
        seen[int(pid)] = value
    return seen


def test_one_process_runs_the_command_and_all_read_the_result(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    counter = tmp_path / "runs"
    # Each run appends its pid and prints a token numbered by the run count.
    command = f"echo $$ >> {counter}; echo tok-$(wc -l < {counter})"
    out = tmp_path / "reads"
    procs += start_workers(4, tmp_path / "store", 2.0, command, out)
    time.sleep(7.0)
    n = len(runs(counter))
    # 7 s at a 2 s interval: a refresh at start and about three more, not four per process.
    assert 3 <= n <= 5, runs(counter)
    reads = last_reads(out)
    assert len(reads) == 4
    # Every process reads the leader's latest token (or, mid-rotation, the one before).
    assert set(reads.values()) <= {f"Bearer tok-{n}", f"Bearer tok-{n - 1}"}


def test_a_killed_leader_is_replaced_within_seconds(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    counter = tmp_path / "runs"
    command = f"echo $PPID >> {counter}; echo tok-$(wc -l < {counter})"
    out = tmp_path / "reads"
    store = tmp_path / "store"
    procs += start_workers(3, store, 2.0, command, out)
    deadline = time.monotonic() + 15
    record = None
    while time.monotonic() < deadline:
        record = awstoken.FileStorage(store).read("shared")
        if record is not None and record.value is not None:
            break
        time.sleep(0.1)
    assert record is not None and record.leader is not None
    leader_pid = int(record.leader.rpartition(":")[2])
    assert leader_pid in {p.pid for p in procs}
    os.kill(leader_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    generation = record.generation
    new_leader = None
    while time.monotonic() - killed_at < 10:
        current = awstoken.FileStorage(store).read("shared")
        if current is not None and current.generation > generation and current.leader:
            new_leader = int(current.leader.rpartition(":")[2])
            break
        time.sleep(0.1)
    took = time.monotonic() - killed_at
    assert new_leader is not None and new_leader != leader_pid
    assert took < 2.0 + 3.0  # the interval plus a few seconds to notice
    survivors = {p.pid for p in procs} - {leader_pid}
    time.sleep(0.5)
    reads = last_reads(out)
    assert current is not None and {reads[pid] for pid in survivors} == {current.value}


def _child_reads(directory: str, queue: multiprocessing.Queue[tuple[str | None, bool, bool]]) -> None:
    rotator = awstoken.default_keeper().rotators["forked"]
    queue.put((awstoken.token("forked"), rotator.running, rotator.leader))


def test_rotators_survive_fork(tmp_path: Path) -> None:
    # As under gunicorn --preload: rotate() in the parent, then fork workers.
    storage = awstoken.FileStorage(tmp_path / "store", poll=0.1)
    awstoken.set_storage(storage)
    try:
        rotator = awstoken.rotate("forked", "echo forked-token")
        deadline = time.monotonic() + 10
        while awstoken.token("forked") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rotator.leader
        ctx = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[tuple[str | None, bool, bool]] = ctx.Queue()
        child = ctx.Process(target=_child_reads, args=(str(tmp_path), queue))
        child.start()
        value, running, leader = queue.get(timeout=10)
        child.join(10)
        assert value == "forked-token"
        assert running and not leader  # the child follows; the parent keeps leading
        assert rotator.leader
    finally:
        awstoken.default_keeper().stop()


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def test_a_refusal_forces_a_refresh_past_a_planted_future_dated_record(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    # Issue 10: a record dated ahead (refreshed "in 4 minutes", expiring in 6 days: both
    # within what storage validation tolerates) stopped upstream 401s from forcing a
    # refresh. The leader is a worker process; this test process is a follower that asks.
    counter = tmp_path / "runs"
    store = tmp_path / "store"
    command = f"echo $$ >> {counter}; echo tok-$(wc -l < {counter})-0123456789"
    processes.issue("Bearer tok-1-0123456789", "Bearer tok-2-0123456789")
    procs += start_workers(1, store, 3600.0, command, tmp_path / "reads", "1.0")
    _wait(lambda: len(runs(counter)) == 1 and (store / "shared.json").exists(), 30,
          "first refresh")
    now = time.time()
    planted = {"value": "Bearer planted-token-0001", "expires_at": now + 6 * 86400,
               "refreshed_at": now + 240, "generation": 50, "leader": "evil:1"}
    (store / ".plant").write_text(json.dumps(planted))
    (store / ".plant").replace(store / "shared.json")
    follower = awstoken.Keeper(awstoken.FileStorage(store, poll=0.1))
    assert follower.token("shared") == "Bearer planted-token-0001"
    time.sleep(1.2)  # past the worker's min_refresh_gap since its first refresh
    follower.request_refresh("shared")  # what the proxy does on an upstream 401
    _wait(lambda: len(runs(counter)) >= 2, 20, "a forced refresh")
    _wait(lambda: follower.token("shared") == "Bearer tok-2-0123456789", 10, "the new token")
    follower.storage.close()
