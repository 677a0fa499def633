"""A fleet of real processes sharing one token through a real redis-server.

Each process runs tests/integration/redis_worker.py: a rotator for one token (a shell command
that logs when it starts and ends, and in which process) and a read loop like a proxy's.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from awstoken import Token
from tests.fixtures.redis import RedisServer

WORKER = Path(__file__).with_name("redis_worker.py")

COMMAND = """#!/bin/sh
echo "start $(date +%s.%N) $FLEET_WORKER" >> "$1"
sleep 0.2
token="tok-$(date +%s%N)-$$"
echo "end $(date +%s.%N) $FLEET_WORKER $token" >> "$1"
echo "$token"
"""


@dataclass
class Run:
    start: float
    end: float | None
    worker: int
    token: str | None


class Fleet:
    def __init__(self, tmp: Path, url: str, **options: float) -> None:
        self.tmp = tmp
        self.url = url
        self.options = options
        self.log = tmp / "runs.log"
        self.log.touch()
        script = tmp / "fetch.sh"
        script.write_text(COMMAND)
        self.command = f"sh {script} {self.log}"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.status_files: dict[int, Path] = {}

    def start(self, count: int) -> None:
        for i in range(len(self.procs), len(self.procs) + count):
            status = self.tmp / f"worker-{i}.json"
            args = [sys.executable, str(WORKER), "--url", self.url, "--command", self.command,
                    "--status", str(status)]
            for key, value in self.options.items():
                args += [f"--{key.replace('_', '-')}", str(value)]
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
            self.procs[proc.pid] = proc
            self.status_files[proc.pid] = status

    def status(self, pid: int) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_files[pid].read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def alive(self) -> list[int]:
        return [pid for pid, proc in self.procs.items() if proc.poll() is None]

    def runs(self) -> list[Run]:
        runs: dict[tuple[int, int], Run] = {}
        open_run: dict[int, Run] = {}
        for line in self.log.read_text().splitlines():
            kind, stamp, worker, *rest = line.split()
            if kind == "start":
                run = Run(float(stamp), None, int(worker), None)
                open_run[int(worker)] = run
                runs[(int(worker), len(runs))] = run
            else:
                run = open_run.pop(int(worker))
                run.end, run.token = float(stamp), rest[0]
        return sorted(runs.values(), key=lambda r: r.start)

    def stop(self) -> dict[int, dict[str, Any]]:
        for pid in self.alive():
            self.procs[pid].send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {pid: self.status(pid) for pid in self.procs
                if self.procs[pid].returncode == 0}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(url: str, **options: float) -> Fleet:
        made.append(Fleet(tmp_path, url, **options))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def wait_until(predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def assert_one_refresher(runs: list[Run], interval: float) -> None:
    """Runs never overlap, and each starts at least ``interval`` after the previous ended."""
    for before, after in itertools.pairwise(runs):
        assert before.end is not None, f"run by {before.worker} never ended"
        gap = after.start - before.end
        assert gap >= interval - 0.05, (
            f"run by {after.worker} started {gap:.3f}s after the run by {before.worker} "
            f"ended (interval {interval}s): two refreshers")


def test_a_fleet_runs_the_command_once_per_interval_and_reads_the_same_token(
        redis_server: RedisServer, fleet: Callable[..., Fleet]) -> None:
    interval = 1.0
    f = fleet(redis_server.url, interval=interval, lease=2.0)
    f.start(3)
    wait_until(lambda: all(f.status(pid).get("seen") for pid in f.procs), timeout=30)
    began = time.time()
    time.sleep(6)
    ended = time.time()
    statuses = f.stop()
    assert len(statuses) == 3
    runs = f.runs()
    assert_one_refresher(runs, interval)
    during = [r for r in runs if began <= r.start <= ended]
    assert 3 <= len(during) <= (ended - began) / interval + 1
    # Three processes, one refresher: the other two never ran the command.
    assert sum(s["refreshes"] for s in statuses.values()) == len(runs)
    produced = [r.token for r in runs if r.token is not None]
    settled = [r.token for r in runs if r.end is not None and r.end < ended - 0.5 and
               r.start >= began]
    for status in statuses.values():
        assert set(status["seen"]) <= set(produced), "a value that no command run produced"
        missing = set(settled) - set(status["seen"])
        assert not missing, f"process {status['pid']} never saw {len(missing)} rotations"
        assert status["nones_after_first"] == 0


def test_sigkill_of_the_leader_hands_over_within_lease_plus_interval(
        redis_server: RedisServer, fleet: Callable[..., Fleet]) -> None:
    interval, lease, poll = 1.0, 2.0, 1.0
    f = fleet(redis_server.url, interval=interval, lease=lease)
    f.start(3)
    wait_until(lambda: len([r for r in f.runs() if r.end]) >= 2, timeout=30)
    # Kill right after a run ended, so no orphaned command is running (it would not be
    # stopped by the kill: it runs in its own process group).
    count = len([r for r in f.runs() if r.end])
    wait_until(lambda: len([r for r in f.runs() if r.end]) > count, timeout=10)
    leader = f.runs()[-1].worker
    os.kill(leader, signal.SIGKILL)
    killed_at = time.time()
    f.procs[leader].wait(timeout=10)
    wait_until(lambda: any(r.worker != leader and r.start > killed_at for r in f.runs()),
               timeout=lease + interval + 10)
    takeover = next(r for r in f.runs() if r.worker != leader and r.start > killed_at)
    # The lease runs out, a follower's next poll takes it, the token is due an interval
    # after the last refresh: lease + interval, plus one follower poll.
    assert takeover.start - killed_at <= lease + interval + poll + 0.5
    # The new leader keeps the rotation going.
    wait_until(lambda: len([r for r in f.runs() if r.start > killed_at and r.end]) >= 2,
               timeout=10)
    stopping = time.time()
    statuses = f.stop()
    assert len(statuses) == 2
    assert_one_refresher(f.runs(), interval)
    # Every survivor saw the last rotation that settled before the stop (one that ended in
    # the last moments may not have reached a reader yet).
    last = [r.token for r in f.runs() if r.end is not None and r.end < stopping - 0.5][-1]
    for status in statuses.values():
        assert status["nones_after_first"] == 0
        assert last in status["seen"]


def test_redis_outage_and_empty_restart_under_load(
        redis_tcp: RedisServer, fleet: Callable[..., Fleet]) -> None:
    f = fleet(redis_tcp.url, interval=3600, lease=2.0, ttl=120, max_backoff=0.5)
    f.start(3)
    wait_until(lambda: all(f.status(pid).get("seen") for pid in f.procs), timeout=30)
    client = redis_tcp.client()
    before = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    assert before.generation == 1
    client.close()
    redis_tcp.stop()
    time.sleep(4)
    assert all(not f.status(pid)["connected"] for pid in f.procs)
    redis_tcp.start()  # empty: no persistence
    restarted = time.monotonic()
    client = redis_tcp.client()
    # Within one reconnection attempt (max_backoff 0.5s) a process writes its copy back.
    wait_until(lambda: client.exists("awstoken:token:fleet"), timeout=3)
    back_after = time.monotonic() - restarted
    after = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    assert (after.value, after.generation) == (before.value, 1)  # restored, not refetched
    assert 0 < client.pttl("awstoken:token:fleet") <= (120 + 60) * 1000
    wait_until(lambda: all(f.status(pid).get("connected") for pid in f.procs), timeout=10)
    wait_until(lambda: client.exists("awstoken:lease:fleet"), timeout=10)  # a leader again
    time.sleep(1)
    statuses = f.stop()
    client.close()
    assert len(statuses) == 3
    assert len(f.runs()) == 1  # nobody had to run the command again
    for status in statuses.values():
        assert status["nones_after_first"] == 0, "a read failed while the cached token was valid"
        assert status["outages"] == 1
        assert status["reads"] > 500
    print(f"token back in Redis {back_after:.2f}s after the restart")
