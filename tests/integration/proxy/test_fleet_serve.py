"""Fleet mode end to end: three ``awstoken serve`` processes (three "hosts") and one Redis.

The members run the console script from their own config files; a stand-in upstream echoes
the Authorization header each proxy attached; the token command logs its runs and detects
overlapping runs itself (see tests/fixtures/fleet.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest

from awstoken import Token
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.fleet import Member, Run, ServeFleet, assert_one_refresher
from tests.fixtures.proxy import Upstream
from tests.fixtures.redis import REDIS_PASSWORD, RedisServer

from .conftest import call

#: How long a new token may take to reach every member (pub/sub: milliseconds; generous for
#: a 2-core machine running the fleet and the load together).
SETTLE = 0.3
HOST = socket.gethostname()


@dataclass
class Sample:
    member: int
    sent: float  # wall clock, like the run log
    answered: float
    status: int  # 0: no HTTP answer at all
    auth: str | None  # the Authorization the upstream received


class Load:
    """One thread per member sending requests through it in a loop, until the block ends."""

    def __init__(self, members: Iterable[Member], pause: float = 0.01) -> None:
        self.members = list(members)
        self.pause = pause
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(m,), daemon=True)
                         for m in self.members]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _loop(self, member: Member) -> None:
        while not self._stop.is_set():
            sent = time.time()
            status, auth = 0, None
            try:
                reply = call(member.url, "GET", "/echo", timeout=10)
                status = reply.status
                if status == 200:
                    headers = {k.lower(): v for k, v in json.loads(reply.body)["headers"]}
                    auth = headers.get("authorization")
            except OSError:
                pass
            self.samples.append(Sample(member.index, sent, time.time(), status, auth))
            self._stop.wait(self.pause)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200 or not s.auth]

    def of(self, member: Member) -> list[Sample]:
        return [s for s in self.samples if s.member == member.index]


def served_since(load: Load, member: Member, since: float, count: int = 1) -> bool:
    """Whether ``count`` requests sent through ``member`` after ``since`` (+ SETTLE) got
    an answer."""
    return len([s for s in load.of(member) if s.sent >= since + SETTLE]) >= count


def assert_same_token_everywhere(samples: list[Sample], runs: list[Run],
                                 members: Iterable[Member]) -> float:
    """Every member attaches only tokens that runs made, in the order they were made (never
    an older one after a newer one), and learns of new ones: they all serve the one token.

    Returns the longest time after a run's end that a member still sent the previous token:
    printed, not asserted (a loaded machine stretches it; it was once 0.302 s).
    """
    finished = [r for r in runs if r.end is not None]
    order = {f"Bearer {r.token}": i for i, r in enumerate(finished)}
    ends = [r.end for r in finished[1:]] + [float("inf")]
    lag = 0.0
    for run, until in zip(finished, ends, strict=True):
        assert run.end is not None and until is not None
        stale = [s.sent - run.end for s in samples if run.end <= s.sent and s.answered <= until
                 and s.auth != f"Bearer {run.token}"]
        lag = max([lag, *stale])
    print(f"longest propagation lag seen: {lag:.3f}s")
    for member in members:
        mine = sorted((s for s in samples if s.member == member.index), key=lambda s: s.sent)
        assert mine, f"no request through member {member.index}"
        strangers = {s.auth for s in mine} - set(order)
        assert not strangers, f"member {member.index} attached tokens no run made: {strangers}"
        seen = [order[s.auth or ""] for s in mine]
        assert seen == sorted(seen), f"member {member.index} went back to an older token"
        rotations = [r for r in finished if r.end and mine[0].sent < r.end < mine[-1].sent]
        if len(rotations) >= 2:
            assert len(set(seen)) >= 2, f"member {member.index} never learnt of a new token"
    return lag


def status(member: Member, fleet: ServeFleet, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*awstoken_cli(), "status", "-c", str(member.config), *extra],
                          capture_output=True, text=True, timeout=60,
                          env=fleet.environment(member.index))


def status_json(member: Member, fleet: ServeFleet) -> dict[str, Any]:
    done = status(member, fleet, "--json")
    assert done.returncode == 0, done.stderr
    row: dict[str, Any] = json.loads(done.stdout)["tokens"][0]
    return row


def stored_value(client: Any) -> str | None:
    """The value of the record in Redis."""
    raw = client.get("awstoken:token:fleet")
    return None if raw is None else Token.from_json(raw, where="test").value


def assert_each_run_stored_once(fleet: ServeFleet, client: Any) -> None:
    """The record in Redis holds the token of a run, numbered by that run's place among all
    runs: every run before it stored exactly one generation (no second refresher's, none
    lost). Waits for the token of the latest finished run to be stored first."""
    def latest_stored() -> list[Run] | None:
        done = fleet.finished()
        return done if done and stored_value(client) == f"Bearer {done[-1].token}" else None

    runs = fleet.wait(latest_stored, 60, "the latest run's token in Redis")
    record = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    made = [f"Bearer {r.token}" for r in fleet.runs()]
    assert record.value in made, "a token no run made"
    assert record.generation == made.index(record.value) + 1, (
        f"generation {record.generation} holds the token of run {made.index(record.value) + 1}"
        f" of {len(runs)}")


def test_a_member_that_exits_fails_the_wait_at_once_with_its_error(
        upstream: Upstream, serve_fleet: Any) -> None:
    """The fixture itself: a member that cannot start fails ``start`` with its exit status
    and its error, not after the wait's bound (10 minutes here: a fixture that only watched
    the port would fail with "waited 600s" instead)."""
    fleet: ServeFleet = serve_fleet(redis_url="ftp://127.0.0.1:1/0", upstream=upstream.url,
                                    interval=1.0, lease=2.0)
    with pytest.raises(AssertionError) as caught:
        fleet.start(1, timeout=600)
    message = str(caught.value)
    assert "member 0" in message and "exited with status 1" in message, message
    assert "storage.url: expected a redis://" in message, message
    assert "waited" not in message


def test_three_serve_processes_run_the_command_once_per_interval_and_attach_one_token(
        redis_server: RedisServer, upstream: Upstream, serve_fleet: Any) -> None:
    interval = 0.5
    fleet: ServeFleet = serve_fleet(redis_url=redis_server.url, upstream=upstream.url,
                                    interval=interval, lease=2.0)
    members = fleet.start(3)
    began = time.time()
    with Load(members) as load:
        fleet.wait(lambda: len([r for r in fleet.finished() if r.start >= began]) >= 4
                   and min(len(load.of(m)) for m in members) >= 50, 60,
                   "four runs and 50 requests through each member")
    client = redis_server.client()
    assert_each_run_stored_once(fleet, client)
    client.close()
    runs = fleet.runs()
    assert fleet.stop() == {0: 0, 1: 0, 2: 0}
    assert fleet.overlaps() == []
    # Once per interval in total, not once per process: each run starts at least an interval
    # after the previous one ended (the record is due an interval after it was stored), by
    # the command's own clock.
    assert_one_refresher(runs, interval)
    assert load.failures == []
    assert min(len(load.of(m)) for m in members) >= 50
    assert_same_token_everywhere(load.samples, runs, members)
    # What the upstream received is exactly what the clients were told it received.
    received = {{k.lower(): v for k, v in seen["headers"]}.get("authorization")
                for seen in upstream.seen}
    assert received == {s.auth for s in load.samples}
    assert received <= {f"Bearer {r.token}" for r in runs}
    for member in members:
        assert "tok-" not in member.stderr()  # token values never reach the logs


def test_sigkill_of_the_leader_hands_over_to_a_survivor(
        redis_server: RedisServer, upstream: Upstream, serve_fleet: Any) -> None:
    interval, lease = 0.5, 2.0
    fleet: ServeFleet = serve_fleet(redis_url=redis_server.url, upstream=upstream.url,
                                    interval=interval, lease=lease)
    members = fleet.start(3)
    fleet.wait(lambda: len(fleet.finished()) >= 2, 60, "two runs")
    leader = members[fleet.finished()[-1].member]
    # `awstoken status` names the holder of the lease: the process that runs the command.
    row = status_json(members[(leader.index + 1) % 3], fleet)
    assert row["leader"] == f"{HOST}:{leader.pid}" and row["usable"] is True
    survivors = [m for m in members if m is not leader]
    client = redis_server.client()
    with Load(survivors) as load:
        # Kill right after the leader stored a new token: a command still running would live
        # on (it has its own process group) and end with a token nobody stores.
        count = len(fleet.finished())
        fleet.wait(lambda: len(fleet.finished()) > count, 30, "one more run")
        last = fleet.finished()[-1]
        assert last.member == leader.index
        fleet.wait(lambda: stored_value(client) == f"Bearer {last.token}", 30, "stored")
        assert leader.proc is not None
        os.kill(leader.pid, signal.SIGKILL)
        killed_at = time.time()
        leader.proc.wait(10)
        # The fleet's waits notice a member that died unasked (this one was asked).
        with pytest.raises(AssertionError, match=f"member {leader.index} .*exited with "
                                                 f"status -{int(signal.SIGKILL)}"):
            fleet.wait(lambda: None, 600, "nothing: the dead member fails the wait")
        leader.retired = True

        def takeover() -> Run | None:
            return next((r for r in fleet.runs() if r.start > killed_at), None)

        # Bounds for a broken run only: the lease runs out (at most `lease` after the kill),
        # a follower takes it, the token is due `interval` after the last refresh.
        first = fleet.wait(takeover, lease + interval + 60, "a run after the kill")
        fleet.wait(lambda: len([r for r in fleet.finished() if r.start > killed_at]) >= 2,
                   60, "the new leader keeps rotating")
        fleet.wait(lambda: all(served_since(load, m, fleet.finished()[-1].end or 0)
                               for m in survivors),
                   60, "a request through each survivor after the last run settled")
    # The first run after the kill is a survivor's, and it continued the record the killed
    # leader stored (its generation follows; nobody started over or ran twice).
    assert first.member != leader.index
    assert load.failures == []  # the survivors never lacked the token
    runs = fleet.runs()
    assert fleet.overlaps() == []
    assert_one_refresher(runs, interval)
    assert_same_token_everywhere(load.samples, runs, survivors)
    assert_each_run_stored_once(fleet, client)
    new_leader = members[fleet.finished()[-1].member]
    assert new_leader is not leader
    client.close()
    # Both CLI runs at once (each is a second of Python start-up).
    with ThreadPoolExecutor(2) as pool:
        as_json = pool.submit(status_json, survivors[0], fleet)
        table = pool.submit(status, survivors[1], fleet).result()
        row = as_json.result()
    assert row["leader"] == f"{HOST}:{new_leader.pid}"
    assert table.returncode == 0 and f"{HOST}:{new_leader.pid}" in table.stdout
    codes = fleet.stop()
    assert codes[leader.index] == -signal.SIGKILL
    assert all(codes[m.index] == 0 for m in survivors)


def test_two_leaders_never_refresh_at_once_even_when_the_leader_freezes_mid_run(
        redis_server: RedisServer, upstream: Upstream, serve_fleet: Any) -> None:
    interval, lease = 0.5, 2.0
    fleet: ServeFleet = serve_fleet(redis_url=redis_server.url, upstream=upstream.url,
                                    interval=interval, lease=lease, run_seconds=0.4)
    members = fleet.start(3)
    fleet.wait(lambda: len(fleet.finished()) >= 2, 60, "two runs")

    def freeze_mid_run() -> tuple[Run, float] | None:
        """Freeze the leader while its command runs (a hung host, a long GC pause): its
        command finishes, but the leader only reads the output after its lease is gone.
        None if the command ended before the freeze took (a loaded machine can delay the
        signal past the 0.4 s run): the leader is let go again, for the next run."""
        count = len(fleet.runs())
        fleet.wait(lambda: len(fleet.runs()) > count, 60, "a run starts")
        run = fleet.runs()[-1]
        member = members[run.member]
        os.kill(member.pid, signal.SIGSTOP)
        frozen_at = time.time()
        ended = fleet.wait(lambda: next((r.end for r in fleet.runs()
                                         if r.start == run.start and r.end), None), 60,
                           "the frozen leader's command ends")
        if ended > frozen_at:
            return run, frozen_at
        os.kill(member.pid, signal.SIGCONT)
        return None

    frozen = next(filter(None, (freeze_mid_run() for _ in range(10))), None)
    assert frozen is not None, "the freeze came after the command ended ten times in a row"
    frozen_run, frozen_at = frozen
    leader = members[frozen_run.member]
    others = [m for m in members if m is not leader]
    with Load(others) as load:
        fleet.wait(lambda: len([r for r in fleet.finished()
                                if r.member != leader.index and r.start > frozen_at]) >= 2,
                   lease + 3 * interval + 60, "two runs by a new leader")
        os.kill(leader.pid, signal.SIGCONT)
        resumed_at = time.time()
        # The resumed leader discards its late result; two more runs show who leads.
        fleet.wait(lambda: "discarding its result" in leader.stderr(), 60,
                   "the resumed leader to discard its result")
        fleet.wait(lambda: len([r for r in fleet.finished() if r.start > resumed_at]) >= 2,
                   3 * interval + 60, "two runs after the resume")
    with Load([leader]) as late:
        settled = (fleet.finished()[-1].end or 0)
        fleet.wait(lambda: served_since(late, leader, settled, 10), 60,
                   "requests through the resumed leader")
    runs = fleet.runs()
    assert fleet.overlaps() == []
    assert_one_refresher(runs, interval)
    # The frozen leader's late result was discarded, and it never led again.
    frozen_token = next(r.token for r in runs if r.start == frozen_run.start)
    assert frozen_token is not None
    assert all(s.auth != f"Bearer {frozen_token}" for s in load.samples + late.samples)
    assert not [r for r in runs if r.member == leader.index and r.start > frozen_run.start]
    client = redis_server.client()
    record = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    client.close()
    assert record.value != f"Bearer {frozen_token}"
    assert record.leader != f"{HOST}:{leader.pid}"
    log = leader.stderr()
    assert "this process stops leading" in log
    assert "leadership was lost during the refresh; discarding its result" in log
    assert load.failures == [] and late.failures == []
    stored = [r for r in runs if r.start != frozen_run.start]  # the discarded run made nothing
    assert_same_token_everywhere(load.samples, stored, others)
    # Once resumed, the old leader serves its successor's tokens like everybody else.
    assert_same_token_everywhere([s for s in late.samples if s.sent > resumed_at], stored,
                                 [leader])
    assert fleet.stop() == {0: 0, 1: 0, 2: 0}


def test_redis_outage_under_load_fails_no_request_and_an_empty_restart_is_repaired(
        redis_tcp_auth: RedisServer, upstream: Upstream, serve_fleet: Any) -> None:
    redis = redis_tcp_auth
    # Refreshes are far off (due 80s in, a third of the 120s lifetime before expiry): any
    # run after the first would be a refetch caused by the outage.
    fleet: ServeFleet = serve_fleet(redis_url=redis.url, upstream=upstream.url,
                                    interval=3600, lease=2.0, ttl=120,
                                    password=REDIS_PASSWORD)
    members = fleet.start(3)
    client = redis.client()
    before = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    client.close()
    assert before.generation == 1
    with Load(members) as load:
        fleet.wait(lambda: all(served_since(load, m, 0, 10) for m in members), 60,
                   "requests through every member")
        redis.stop()
        stopped_at = time.time()
        fleet.wait(lambda: all(fleet.metric(m, 'awstoken_storage_connected{storage="redis"}')
                               == 0.0 and served_since(load, m, stopped_at, 50)
                               for m in members), 60,
                   "every member to see the outage, and 50 requests through each meanwhile")
        during: dict[int, tuple[float | None, float | None, int, str]] = {}
        for m in members:
            ready, body = fleet.admin_get(m, "/readyz")
            during[m.index] = (fleet.metric(m, 'awstoken_storage_connected{storage="redis"}'),
                               fleet.metric(m, 'awstoken_storage_outages_total{storage="redis"}'),
                               ready, body)
        down = status(members[1], fleet)
        redis.start()  # empty: no persistence
        restarted = time.monotonic()
        restarted_at = time.time()
        client = redis.client()
        fleet.wait(lambda: client.exists("awstoken:token:fleet"), 60, "the token back in Redis")
        back_after = time.monotonic() - restarted
        fleet.wait(lambda: all(fleet.metric(m, 'awstoken_storage_connected{storage="redis"}')
                               == 1.0 for m in members), 60, "every member reconnected")
        fleet.wait(lambda: client.exists("awstoken:lease:fleet"), 60, "a leader again")
        fleet.wait(lambda: all(served_since(load, m, restarted_at, 10) for m in members), 60,
                   "requests through every member after the restart")
    # Zero failed proxied requests, through all three, before, during and after the outage.
    assert load.failures == []
    for m in members:
        outage = [s for s in load.of(m) if stopped_at < s.sent and s.answered < restarted_at]
        assert len(outage) >= 50, f"member {m.index}: only {len(outage)} requests in the outage"
        assert {s.auth for s in load.of(m)} == {before.value}
    # Metrics show the outage while /readyz stays ready: the cache serves.
    for index, (connected, outages, ready, body) in during.items():
        assert (connected, outages, ready) == (0.0, 1.0, 200), (index, body)
        answer = json.loads(body)
        assert answer["ready"] is True and answer["tokens"]["fleet"]["ready"] is True
        assert answer["storage"]["connected"] is False and answer["storage"]["outages"] == 1
    assert down.returncode == 1 and "Redis at redis://127.0.0.1:" in down.stderr
    # Written back by a member that still had it (once Redis was back), not refetched: the
    # same token, generation 1, and still one run of the command.
    after = Token.from_json(client.get("awstoken:token:fleet"), where="test")
    client.close()
    assert (after.value, after.generation) == (before.value, 1)
    assert len(fleet.runs()) == 1
    row = status_json(members[2], fleet)
    assert row["usable"] is True and row["leader"] in {f"{HOST}:{m.pid}" for m in members}
    outputs = [down.stdout, down.stderr, json.dumps(row), json.dumps(during)]
    for m in members:
        outputs += [fleet.admin_get(m, "/metrics")[1], fleet.admin_get(m, "/readyz")[1]]
        assert "awstoken_storage_errors_total" in outputs[-2]
    assert fleet.stop() == {0: 0, 1: 0, 2: 0}
    logs = [m.stderr() for m in members]
    assert "is unavailable" in logs[0] and "redis://***@127.0.0.1" in logs[0]
    assert any("was missing from Redis" in log and "wrote back this process's copy "
               "(generation 1)" in log for log in logs)
    for text in outputs + logs:
        assert REDIS_PASSWORD not in text
        assert "tok-" not in text
    print(f"token back in Redis {back_after:.2f}s after the restart")


def test_workers_report_redis_health_once(redis_server: RedisServer, upstream: Upstream,
                                          serve_fleet: Any) -> None:
    fleet: ServeFleet = serve_fleet(redis_url=redis_server.url, upstream=upstream.url,
                                    interval=3600, lease=2.0, workers=2)
    (member,) = fleet.start(1)
    for _ in range(10):
        assert call(member.url, "GET", "/echo").status == 200
    _, text = fleet.admin_get(member, "/metrics")
    # The parent reports the storage (and tokens) itself; summing its workers' gauges would
    # say "3 connected".
    lines = [line for line in text.splitlines() if line.startswith("awstoken_storage_connected")]
    assert lines == ['awstoken_storage_connected{storage="redis"} 1.0']
    assert 'awstoken_storage_outages_total{storage="redis"} 0.0' in text
    assert fleet.stop() == {0: 0}
