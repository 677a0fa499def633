"""Many real processes rotating one token on a FileStorage: one runs the command."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import awstoken
from tests.fixtures import processes
from tests.fixtures.wait import wait_until

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
    # Each run appends the worker that ran it and when it started (the shell's parent is
    # the worker), and prints a token numbered by the run count.
    command = f"echo $PPID $(date +%s.%N) >> {counter}; echo tok-$(wc -l < {counter})"
    out = tmp_path / "reads"
    interval = 1.0
    procs += start_workers(4, tmp_path / "store", interval, command, out)
    wait_until(lambda: len(runs(counter)) >= 4, 60, "four runs")
    n = len(runs(counter))
    # A refresh at start and one per interval since, not one per process (four at start):
    # each run starts at least an interval after the one before, by the command's clock.
    starts = [float(line.split()[1]) for line in runs(counter)]
    gaps = [after - before for before, after in itertools.pairwise(starts)]
    assert min(gaps) >= interval - 0.05, f"runs {gaps} apart: two refreshers"
    assert {int(line.split()[0]) for line in runs(counter)} <= {p.pid for p in procs}

    def four_reads() -> dict[int, str] | None:
        reads = last_reads(out)
        return reads if len(reads) == 4 else None

    reads = wait_until(four_reads, 60, "a read by each of the four processes")
    n = len(runs(counter))
    # Every process reads the leader's latest token (or, mid-rotation, the one before).
    assert set(reads.values()) <= {f"Bearer tok-{n}", f"Bearer tok-{n - 1}"}


def test_a_killed_leader_is_replaced_by_a_survivor(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    counter = tmp_path / "runs"
    command = f"echo $PPID >> {counter}; echo tok-$(wc -l < {counter})"
    out = tmp_path / "reads"
    store = tmp_path / "store"
    procs += start_workers(3, store, 2.0, command, out)

    def first_record() -> awstoken.Token | None:
        record = awstoken.FileStorage(store).read("shared")
        return record if record is not None and record.value is not None else None

    record = wait_until(first_record, 60, "a first record")
    assert record.leader is not None
    leader_pid = int(record.leader.rpartition(":")[2])
    assert leader_pid in {p.pid for p in procs}
    os.kill(leader_pid, signal.SIGKILL)
    generation = record.generation

    def next_record() -> awstoken.Token | None:
        current = awstoken.FileStorage(store).read("shared")
        return current if current is not None and current.generation > generation \
            and current.leader else None

    # The bound only ends a broken run: the interval plus the time to notice the lock free.
    current = wait_until(next_record, 60, "a record by a new leader")
    assert current.leader is not None
    new_leader = int(current.leader.rpartition(":")[2])
    survivors = {p.pid for p in procs} - {leader_pid}
    assert new_leader in survivors
    # The new leader continued from the killed one's record: the next generation, made by
    # the next run of the command, which the new leader ran.
    assert current.generation == generation + 1
    assert runs(counter)[generation] == str(new_leader)
    assert current.value == f"Bearer tok-{generation + 1}"
    wait_until(lambda: {last_reads(out).get(pid) for pid in survivors} == {current.value}, 60,
               "the survivors to read the new leader's token")


def _child_reads(directory: str, queue: multiprocessing.Queue[tuple[str | None, bool, bool]]) -> None:
    rotator = awstoken.default_keeper().rotators["forked"]
    queue.put((awstoken.token("forked"), rotator.running, rotator.leader))


def test_rotators_survive_fork(tmp_path: Path) -> None:
    # As under gunicorn --preload: rotate() in the parent, then fork workers.
    storage = awstoken.FileStorage(tmp_path / "store", poll=0.1)
    awstoken.set_storage(storage)
    try:
        rotator = awstoken.rotate("forked", "echo forked-token")
        wait_until(lambda: awstoken.token("forked"), 10, "the first token")
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


def test_a_refusal_forces_a_refresh_past_a_planted_future_dated_record(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    # Issue 10: a record dated ahead (refreshed "in 4 minutes", expiring in 6 days: both
    # within what storage validation tolerates) stopped upstream 401s from forcing a
    # refresh. The leader is a worker process; this test process is a follower that asks.
    counter = tmp_path / "runs"
    store = tmp_path / "store"
    command = f"echo $$ >> {counter}; echo tok-$(wc -l < {counter})-0123456789"
    processes.issue("Bearer tok-1-0123456789", "Bearer tok-2-0123456789")
    procs += start_workers(1, store, 3600.0, command, tmp_path / "reads", "0.2")
    wait_until(lambda: len(runs(counter)) == 1 and (store / "shared.json").exists(), 30,
               "first refresh")
    now = time.time()
    planted = {"value": "Bearer planted-token-0001", "expires_at": now + 6 * 86400,
               "refreshed_at": now + 240, "generation": 50, "leader": "evil:1"}
    (store / ".plant").write_text(json.dumps(planted))
    (store / ".plant").replace(store / "shared.json")
    follower = awstoken.Keeper(awstoken.FileStorage(store, poll=0.1))
    assert follower.token("shared") == "Bearer planted-token-0001"
    time.sleep(0.3)  # past the worker's min_refresh_gap (0.2 s) since its first refresh
    follower.request_refresh("shared")  # what the proxy does on an upstream 401
    wait_until(lambda: len(runs(counter)) >= 2, 20, "a forced refresh")
    wait_until(lambda: follower.token("shared") == "Bearer tok-2-0123456789", 10, "the new token")
    follower.storage.close()
