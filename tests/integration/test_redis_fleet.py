"""A fleet of real processes sharing one token through a real redis-server.

Each process runs tests/integration/redis_worker.py: a rotator for one token (a shell command
that logs when it starts and ends, and in which process) and a read loop like a proxy's.
Each worker's output goes to its own log; every wait (:meth:`Fleet.wait`) fails at once,
with that log, when a worker the test did not kill has exited, and a failed test prints
every worker's log.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from awstoken import Token
from tests.fixtures.fleet import failed, print_logs, tail
from tests.fixtures.redis import RedisServer
from tests.fixtures.wait import wait_until

T = TypeVar("T")

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
        self.logs: dict[int, Path] = {}
        self.retired: set[int] = set()  # killed by the test: their exit is no failure

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
            log = self.tmp / f"worker-{i}.log"
            with log.open("wb") as out:  # a file: a pipe nobody reads would block it
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env)
            self.procs[proc.pid] = proc
            self.status_files[proc.pid] = status
            self.logs[proc.pid] = log
            pids.append(proc.pid)
        return pids

    def check(self) -> None:
        """Fail at once, with its exit status and log, if a worker the test did not kill
        has exited."""
        for pid, proc in self.procs.items():
            code = proc.poll()
            if code is not None and pid not in self.retired:
                log = self.logs[pid]
                raise AssertionError(f"worker {pid} exited with status {code}; the end of its "
                                     f"log {log}:\n{tail(log.read_text(errors='replace'))}")

    def wait(self, predicate: Callable[[], T | None], timeout: float,
             what: str = "the condition") -> T:
        """:func:`wait_until` that fails at once if a worker dies meanwhile. ``timeout``
        bounds a broken run only."""

        def watched() -> T | None:
            self.check()
            return predicate()

        return wait_until(watched, timeout, what)

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        self.retired.add(pid)
        os.kill(pid, sig)

    def record(self, client: Any) -> Token | None:
        raw = client.get("awstoken:token:fleet")
        return None if raw is None else Token.from_json(raw, where="test")

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
        self.retired.update(self.procs)
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
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(url: str, **options: float) -> Fleet:
        made.append(Fleet(tmp_path, url, **options))
        return made[-1]

    yield make
    for f in made:
        f.stop()
    if failed(request):
        print_logs({f"worker {pid} (exit status {f.procs[pid].returncode})": log
                    for f in made for pid, log in f.logs.items()})


def assert_each_run_stored_once(f: Fleet, client: Any) -> None:
    """The record in Redis holds the token of a run, numbered by that run's place among all
    runs: every run before it stored exactly one generation (none by a second refresher,
    none lost). Waits for the latest finished run's token to be stored first."""

    def latest_stored() -> Token | None:
        done = [r for r in f.runs() if r.end]
        record = f.record(client)
        return record if done and record and record.value == done[-1].token else None

    record = f.wait(latest_stored, 60, "the latest run's token in Redis")
    made = [r.token for r in f.runs()]
    assert record.generation == made.index(record.value) + 1, (
        f"generation {record.generation} holds the token of run "
        f"{made.index(record.value) + 1} of {len(made)}")


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
    interval = 0.5
    f = fleet(redis_server.url, interval=interval, lease=2.0)
    f.start(3)
    f.wait(lambda: all(f.status(pid).get("seen") for pid in f.procs), 60, "a first read")
    began = time.time()
    f.wait(lambda: len([r for r in f.runs() if r.start >= began and r.end]) >= 4, 60,
           "four runs")
    client = redis_server.client()
    assert_each_run_stored_once(f, client)
    client.close()
    # Every process has read the latest token: everything made before it has settled.
    last = [r.token for r in f.runs() if r.end][-1]
    assert last is not None
    f.wait(lambda: all(last in f.status(pid).get("seen", []) for pid in f.procs), 60,
           "every process to read the latest token")
    statuses = f.stop()
    assert len(statuses) == 3
    runs = f.runs()
    # Once per interval in total, not once per process: each run starts at least an interval
    # after the previous one ended, by the command's own clock.
    assert_one_refresher(runs, interval)
    # Three processes, one refresher: the other two never ran the command.
    assert sum(s["refreshes"] for s in statuses.values()) == len(runs)
    produced = [r.token for r in runs if r.token is not None]
    settled = [r.token for r in runs if r.start >= began and r.token is not None]
    settled = settled[:settled.index(last) + 1]
    for status in statuses.values():
        assert set(status["seen"]) <= set(produced), "a value that no command run produced"
        missing = set(settled) - set(status["seen"])
        assert not missing, f"process {status['pid']} never saw {len(missing)} rotations"
        assert status["nones_after_first"] == 0


def test_sigkill_of_the_leader_hands_over_to_a_survivor(
        redis_server: RedisServer, fleet: Callable[..., Fleet]) -> None:
    interval, lease = 0.5, 2.0
    f = fleet(redis_server.url, interval=interval, lease=lease)
    f.start(3)
    f.wait(lambda: len([r for r in f.runs() if r.end]) >= 2, 60, "two runs")
    # Kill right after a run ended, so no orphaned command is running (it would not be
    # stopped by the kill: it runs in its own process group).
    count = len([r for r in f.runs() if r.end])
    f.wait(lambda: len([r for r in f.runs() if r.end]) > count, 60, "one more run")
    leader = f.runs()[-1].worker
    client = redis_server.client()
    f.wait(lambda: (r := f.record(client)) and r.value == f.runs()[-1].token, 60,
           "the leader's token stored")
    os.kill(leader, signal.SIGKILL)  # not through f.kill(): the waits notice it
    killed_at = time.time()
    f.procs[leader].wait(timeout=10)
    with pytest.raises(AssertionError, match=f"worker {leader} exited with status -9"):
        f.wait(lambda: None, 600, "nothing: the dead worker fails the wait")
    f.retired.add(leader)
    # Bounds for a broken run only: the lease runs out, a follower's next poll takes it, the
    # token is due an interval after the last refresh.
    takeover = f.wait(lambda: next((r for r in f.runs() if r.start > killed_at), None),
                      lease + interval + 60, "a run after the kill")
    assert takeover.worker != leader
    # The new leader keeps the rotation going, from the record the old one stored: each run
    # stored exactly one generation.
    f.wait(lambda: len([r for r in f.runs() if r.start > killed_at and r.end]) >= 2, 60,
           "two runs by the new leader")
    assert_each_run_stored_once(f, client)
    client.close()
    last = [r.token for r in f.runs() if r.end][-1]
    f.wait(lambda: all(last in f.status(pid).get("seen", []) for pid in f.alive()), 60,
           "every survivor to read the latest token")
    statuses = f.stop()
    assert len(statuses) == 2
    assert_one_refresher(f.runs(), interval)
    for status in statuses.values():
        assert status["nones_after_first"] == 0
        assert last in status["seen"]


def test_redis_outage_and_empty_restart_under_load(
        redis_tcp: RedisServer, fleet: Callable[..., Fleet]) -> None:
    f = fleet(redis_tcp.url, interval=3600, lease=2.0, ttl=120, max_backoff=0.5)
    f.start(3)
    f.wait(lambda: all(f.status(pid).get("seen") for pid in f.procs), 60, "a first read")
    client = redis_tcp.client()
    before = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    assert before.generation == 1
    client.close()
    redis_tcp.stop()
    f.wait(lambda: all(not f.status(pid)["connected"] for pid in f.procs), 60,
           "every process to notice the outage")
    during = {pid: f.status(pid)["reads"] for pid in f.procs}
    redis_tcp.start()  # empty: no persistence
    restarted = time.monotonic()
    client = redis_tcp.client()
    # A process writes its copy back once it reconnects (max_backoff 0.5s; not asserted).
    f.wait(lambda: client.exists("awstoken:token:fleet"), 60, "the token back in Redis")
    back_after = time.monotonic() - restarted
    after = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    assert (after.value, after.generation) == (before.value, 1)  # restored, not refetched
    assert 0 < client.pttl("awstoken:token:fleet") <= (120 + 60) * 1000
    f.wait(lambda: all(f.status(pid).get("connected") for pid in f.procs), 60,
           "every process reconnected")
    f.wait(lambda: client.exists("awstoken:lease:fleet"), 60, "a leader again")
    # Reads go on through the outage and after it (counted in the status files).
    f.wait(lambda: all(f.status(pid)["reads"] > during[pid] + 100 for pid in f.procs), 60,
           "100 more reads in each process after the outage")
    statuses = f.stop()
    client.close()
    assert len(statuses) == 3
    assert len(f.runs()) == 1  # nobody had to run the command again
    for status in statuses.values():
        assert status["nones_after_first"] == 0, "a read failed while the cached token was valid"
        assert status["outages"] == 1
        assert status["reads"] > during[status["pid"]] + 100
    print(f"token back in Redis {back_after:.2f}s after the restart")


def assert_no_overlap(runs: list[Run]) -> None:
    for before, after in itertools.pairwise(runs):
        assert before.end is None or after.start >= before.end, (
            f"the run by {after.worker} started while the run by {before.worker} was running")


def flushed(runs: list[Run], flushes: list[float]) -> set[str]:
    """Tokens of runs that a FLUSHALL hit: one came after the run started and before the next
    run did. Their leader may have found its lease gone and discarded the token, by design:
    a vanished lease is never taken back, since a follower may have taken it meanwhile."""
    hit = set()
    for i, run in enumerate(runs):
        until = runs[i + 1].start if i + 1 < len(runs) else math.inf
        if run.token is not None and any(run.start < t < until for t in flushes):
            hit.add(run.token)
    return hit


def test_flushall_while_rotating_gives_no_overlap_and_one_call_per_rotation(
        redis_server: RedisServer, fleet: Callable[..., Fleet]) -> None:
    """Issue 12, failure 1: after FLUSHALL a follower took the vanished lease while the old
    leader kept leading until its next renewal: two refreshers."""
    lease = 2.0
    f = fleet(redis_server.url, interval=1.0, lease=lease)
    f.start(3, run_seconds=0.4)
    f.wait(lambda: all(f.status(pid).get("seen") for pid in f.procs), 60, "a first read")
    client = redis_server.client()
    flushes: list[float] = []
    for _ in range(4):
        # FLUSHALL in the middle of a run, when the old leader is busiest.
        count = len(f.runs())
        def grew(n: int = count) -> bool:
            return len(f.runs()) > n

        f.wait(grew, 3 * lease + 60, "a run starts")
        time.sleep(0.1)
        client.flushall()
        flushes.append(time.time())
    client.close()

    def settled() -> bool:
        """A run started after the last FLUSHALL has ended, and every token made by a run
        that no FLUSHALL hit reached a reader."""
        seen = {t for pid in f.procs for t in f.status(pid).get("seen", [])}
        runs = f.runs()
        spared = {r.token for r in runs if r.token is not None} - flushed(runs, flushes)
        return any(r.start > flushes[-1] and r.end for r in runs) and spared <= seen

    f.wait(settled, 3 * lease + 60, "a run after the last FLUSHALL, its token read")
    statuses = f.stop()
    assert len(statuses) == 3
    runs = f.runs()
    assert_no_overlap(runs)
    seen = {token for status in statuses.values() for token in status["seen"]}
    finished = [r.token for r in runs if r.token is not None]
    # One call per rotation: a token nobody used comes only from a run a FLUSHALL hit
    # (usually the watch kills such a run before it makes one). Anything else is a second
    # refresher or a lost write.
    wasted = [t for t in finished if t not in seen and t not in flushed(runs, flushes)]
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
    # The followers start once it leads (they start up while its first run goes on).
    f.wait(lambda: f.status(leader).get("leader"), 60, "the first worker to lead")
    followers = f.start(2, run_seconds=0.8)
    f.wait(lambda: all(f.status(pid).get("seen") for pid in f.procs), 60, "a first read")
    count = len(f.runs())
    if when == "mid-refresh":
        f.wait(lambda: len(f.runs()) > count, 60, "a run starts")
        time.sleep(0.1)
    else:
        f.wait(lambda: len(f.runs()) > count and f.runs()[-1].end, 60, "a run ends")
        time.sleep(0.05)
    assert f.runs()[-1].worker == leader
    failed_at = time.time()
    getattr(relay, fault)()
    # The successor takes over once the lease expires in Redis and refreshes; heal right
    # after its first refresh, so that what the old leader kept has the same generation.
    f.wait(lambda: any(r.worker != leader and r.end and r.start > failed_at
                       for r in f.runs()), lease + 60, "a run by the successor")
    relay.heal()
    healed_at = time.time()
    f.wait(lambda: f.status(leader).get("connected"), 60, "the old leader reconnected")

    def caught_up() -> bool:
        """The old leader serves a token of its successor's: its catch-up after the outage,
        which writes back (or drops) what it kept, is over."""
        seen = f.status(leader).get("seen") or []
        return bool(seen) and seen[-1] in {r.token for r in f.runs() if r.worker != leader}

    f.wait(caught_up, 60, "the old leader to serve its successor's token")
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
