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
sleep "${FLEET_RUN_SECONDS:-0.2}"
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

    def start(self, count: int, *, url: str | None = None, run_seconds: float = 0.2,
              **extra: float) -> list[int]:
        """Start ``count`` workers (through ``url`` if given); return their pids."""
        pids = []
        for i in range(len(self.procs), len(self.procs) + count):
            status = self.tmp / f"worker-{i}.json"
            args = [sys.executable, str(WORKER), "--url", url or self.url, "--command",
                    self.command, "--status", str(status)]
            for key, value in {**self.options, **extra}.items():
                args += [f"--{key.replace('_', '-')}", str(value)]
            env = {**os.environ, "FLEET_RUN_SECONDS": str(run_seconds)}
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, env=env)
            self.procs[proc.pid] = proc
            self.status_files[proc.pid] = status
            pids.append(proc.pid)
        return pids

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


def assert_no_overlap(runs: list[Run]) -> None:
    for before, after in itertools.pairwise(runs):
        assert before.end is None or after.start >= before.end, (
            f"the run by {after.worker} started while the run by {before.worker} was running")


def test_flushall_while_rotating_gives_no_overlap_and_one_call_per_rotation(
        redis_server: RedisServer, fleet: Callable[..., Fleet]) -> None:
    """Issue 12, failure 1: after FLUSHALL a follower took the vanished lease while the old
    leader kept leading until its next renewal: two refreshers."""
    lease = 4.0
    f = fleet(redis_server.url, interval=1.0, lease=lease)
    f.start(3, run_seconds=0.4)
    wait_until(lambda: all(f.status(pid).get("seen") for pid in f.procs), timeout=30)
    client = redis_server.client()
    for _ in range(4):
        # FLUSHALL in the middle of a run, when the old leader is busiest.
        count = len(f.runs())
        def grew(n: int = count) -> bool:
            return len(f.runs()) > n

        wait_until(grew, timeout=3 * lease + 10)
        time.sleep(0.1)
        client.flushall()
        time.sleep(lease + 2.5)
    client.close()
    wait_until(lambda: len([r for r in f.runs() if r.end]) >= 2, timeout=10)
    statuses = f.stop()
    assert len(statuses) == 3
    runs = f.runs()
    assert_no_overlap(runs)
    seen = {token for status in statuses.values() for token in status["seen"]}
    finished = [r.token for r in runs if r.token is not None]
    wasted = [t for t in finished if t not in seen]
    assert not wasted, f"{len(wasted)} of {len(finished)} source calls made tokens nobody used"
    for status in statuses.values():
        assert status["nones_after_first"] == 0


def _order(runs: list[Run]) -> dict[str, int]:
    return {r.token: i for i, r in enumerate(runs) if r.token is not None}


@pytest.mark.parametrize("fault", ["cut", "freeze"])
@pytest.mark.parametrize("when", ["mid-refresh", "between-refreshes"])
def test_a_leader_cut_off_never_runs_late_and_never_brings_back_an_older_token(
        redis_tcp: RedisServer, fleet: Callable[..., Fleet], fault_relay: Any, fault: str,
        when: str) -> None:
    """Issue 12, failures 2 and 3: a leader behind a relay that fails hard (cut) or silently
    (freeze) must not run the source after its lease deadline, and whatever it refreshed
    while cut off must never replace the newer token its successor wrote."""
    lease, interval = 2.0, 1.0
    relay = fault_relay(redis_tcp.port)
    f = fleet(redis_tcp.url, interval=interval, lease=lease)
    # The leader: slow runs, and (silent failure) Redis calls that block for long.
    leader = f.start(1, url=relay.url, run_seconds=0.8, timeout=1.5, max_backoff=0.2)[0]
    wait_until(lambda: any(r.worker == leader and r.end for r in f.runs()), timeout=30)
    followers = f.start(2, run_seconds=0.8)
    wait_until(lambda: all(f.status(pid).get("seen") for pid in f.procs), timeout=30)
    count = len(f.runs())
    if when == "mid-refresh":
        wait_until(lambda: len(f.runs()) > count, timeout=10)
        time.sleep(0.1)
    else:
        wait_until(lambda: len(f.runs()) > count and f.runs()[-1].end, timeout=10)
        time.sleep(0.05)
    assert f.runs()[-1].worker == leader
    failed_at = time.time()
    getattr(relay, fault)()
    # The successor takes over once the lease expires in Redis and refreshes; heal right
    # after its first refresh, so that what the old leader kept has the same generation.
    wait_until(lambda: any(r.worker != leader and r.end and r.start > failed_at
                           for r in f.runs()), timeout=lease + 15)
    relay.heal()
    healed_at = time.time()
    wait_until(lambda: f.status(leader).get("connected"), timeout=15)
    time.sleep(2.0)  # what the old leader kept would be written back by now
    statuses = f.stop()
    assert len(statuses) == 3
    runs = f.runs()
    assert_no_overlap([r for r in runs if r.start < healed_at])
    late = [r for r in runs if r.worker == leader and failed_at + lease <= r.start < healed_at]
    assert not late, f"the cut-off leader ran the source {late[0].start - failed_at:.2f}s " \
        f"after it lost Redis (lease {lease}s)"
    order = _order(runs)
    for pid in followers:
        seen = [order[t] for t in statuses[pid]["seen"] if t in order]
        assert seen == sorted(seen), f"worker {pid} went back to an older token"
        assert statuses[pid]["nones_after_first"] == 0
