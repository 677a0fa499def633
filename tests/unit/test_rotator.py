"""Rotator scheduling, driven step by step on an injected clock."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import awstoken
from awstoken import Fetched, MemoryStorage, Rotator, Schedule
from awstoken._rotation.rotator import fetch_value
from tests.fixtures.clock import ManualClock
from tests.fixtures.wait import wait_until


class Script:
    """A source that plays a script: a string is a token, an exception is raised."""

    def __init__(self, clock: ManualClock, lifetime: float | None = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.fail = False
        self.calls: list[float] = []
        self.n = 0

    def fetch(self) -> Fetched:
        self.calls.append(self.clock())
        if self.fail:
            raise awstoken.SourceError("AWS said no (ThrottlingException)")
        self.n += 1
        expires = None if self.lifetime is None else self.clock() + self.lifetime
        return Fetched(f"tok{self.n}", expires)


def make(clock: ManualClock, source: Script, **schedule: float) -> tuple[Rotator, MemoryStorage]:
    storage = MemoryStorage(clock=clock)
    options: dict[str, float] = {"interval": 100, "retry": 10, "jitter": 0, "max_retry": 80,
                                 "poll": 1}
    options.update(schedule)
    rotator = Rotator("t", source, awstoken.template("Basic {token}"), storage,
                      schedule=Schedule(**options), clock=clock, rand=lambda: 1.0)
    return rotator, storage


def run_until(rotator: Rotator, clock: ManualClock, until: float) -> None:
    """Step the rotator, advancing the fake clock by what each step asks."""
    while clock.now < until:
        delay = rotator.step()
        clock.now += max(delay, 0.001)


def value(storage: MemoryStorage) -> str | None:
    record = storage.read("t")
    return None if record is None else record.value


def test_refreshes_now_then_on_the_interval() -> None:
    clock = ManualClock()
    source = Script(clock)
    rotator, storage = make(clock, source)
    start = clock.now
    run_until(rotator, clock, start + 350)
    assert [round(c - start) for c in source.calls] == [0, 100, 200, 300]
    assert value(storage) == "Basic tok4"
    record = storage.read("t")
    assert record is not None and record.generation == 4 and rotator.leader


def test_failures_back_off_exponentially_to_the_cap_and_keep_the_token() -> None:
    clock = ManualClock()
    source = Script(clock)
    rotator, storage = make(clock, source)
    start = clock.now
    rotator.step()
    source.fail = True
    run_until(rotator, clock, start + 500)
    # First refresh at 0, due at 100; then retries 10, 20, 40, 80 (cap), 80, ...
    assert [round(c - start) for c in source.calls] == [0, 100, 110, 130, 170, 250, 330, 410, 490]
    assert value(storage) == "Basic tok1"  # the last good token is still served
    record = storage.read("t")
    assert record is not None and record.failures == 8
    assert record.error is not None and "ThrottlingException" in record.error
    assert "tok1" not in record.error
    # Success returns to the normal interval and clears the failure count.
    source.fail = False
    run_until(rotator, clock, start + 700)
    assert [round(c - start) for c in source.calls][9:] == [570, 670]
    record = storage.read("t")
    assert record is not None and record.failures == 0 and record.error is None


def test_jitter_lengthens_retries_within_its_fraction() -> None:
    clock = ManualClock()
    source = Script(clock)
    rotator, _ = make(clock, source, jitter=0.2, max_retry=1000)
    start = clock.now
    source.fail = True
    run_until(rotator, clock, start + 60)
    # rand() is pinned at 1.0, the top of the jitter range: 12, then 24, then 48.
    assert [round(c - start) for c in source.calls] == [0, 12, 36]


def test_known_expiry_moves_the_refresh_earlier() -> None:
    clock = ManualClock()
    source = Script(clock, lifetime=900)  # a 15-minute token, interval 6 h
    rotator, _ = make(clock, source, interval=6 * 3600, advisory=900, mandatory=600)
    start = clock.now
    run_until(rotator, clock, start + 1300)
    # Advisory window = min(15 min, lifetime / 3) = 300 s before expiry: refresh every 600 s.
    assert [round(c - start) for c in source.calls] == [0, 600, 1200]


def test_mandatory_window_retries_faster_than_the_backoff() -> None:
    clock = ManualClock()
    source = Script(clock, lifetime=900)
    rotator, storage = make(clock, source, interval=6 * 3600, retry=100, max_retry=1000)
    start = clock.now
    rotator.step()
    source.fail = True
    run_until(rotator, clock, start + 900)
    offsets = [round(c - start) for c in source.calls]
    # Advisory at 600 (retry 100 -> 700), then 200 would pass the expiry at 900: inside the
    # mandatory window (150 s) retries wait half the time left instead.
    assert offsets[:3] == [0, 600, 700]
    assert all(later - earlier < 200 for earlier, later in itertools.pairwise(offsets[2:]))
    assert offsets[-1] >= 890
    record = storage.read("t")
    assert record is not None and record.failures >= 4


def test_an_expired_token_is_never_returned() -> None:
    clock = ManualClock()
    storage = MemoryStorage(clock=clock)  # a margin of 1 s
    now = clock.now
    storage.write("t", awstoken.Token("Basic old", expires_at=now + 1.05, refreshed_at=now))
    assert storage.get("t") == "Basic old"
    # Past the expiry. The cache thread evicts the value a margin before the expiry: it was
    # told to look again in 0.05 s of real time, and finds the injected clock past it.
    clock.now += 1.7
    wait_until(lambda: "t" not in storage.values, 10, "the expired value evicted")
    assert storage.get("t") is None
    storage.write("t", awstoken.Token("Basic dead", expires_at=clock.now - 1, refreshed_at=now))
    assert storage.get("t") is None


def test_a_token_expired_on_arrival_says_when_and_what_to_check() -> None:
    # moto's ECR answers expiresAt = 2015-01-01: the message must point at the endpoint and
    # the clock, with the date, not only a count of seconds.
    class Moto:
        def fetch(self) -> Fetched:
            return Fetched("tok", expires_at=1420070400.0)

    with pytest.raises(awstoken.TokenExpiredError) as caught:
        fetch_value("ecr", Moto(), awstoken.template("{token}"), lambda: 1767225600.0)
    message = str(caught.value)
    assert "expired at 2015-01-01 00:00:00 UTC" in message
    assert "2026-01-01 00:00:00 UTC" in message
    assert "check the endpoint" in message and "clock" in message
    assert "tok" not in message.replace("token", "")


def test_a_freshly_fetched_expired_token_is_a_failure() -> None:
    clock = ManualClock()

    class Stale:
        def fetch(self) -> Fetched:
            return Fetched("tok", expires_at=clock() - 5)

    rotator = Rotator("t", Stale(), awstoken.template("{token}"), MemoryStorage(clock=clock),
                      clock=clock)
    with pytest.raises(awstoken.TokenExpiredError, match=r"expired at .*, 5s before"):
        rotator.refresh()
    rotator.step()  # not due yet: the failure set a retry time
    clock.now += 40  # past retry (30 s) plus the largest jitter
    rotator.step()
    record = rotator.storage.read("t")
    assert record is not None and record.value is None and record.failures == 2


@pytest.mark.parametrize("bad", ["tok\r\nX-Injected: yes", "", "tok\x00"])
def test_a_bad_value_keeps_the_previous_token(bad: str) -> None:
    clock = ManualClock()
    outputs = iter(["good", bad])
    storage = MemoryStorage(clock=clock)
    rotator = Rotator("t", awstoken.FunctionSource(lambda: next(outputs)),
                      awstoken.template("Basic {token}"), storage, clock=clock)
    rotator.refresh()
    with pytest.raises(awstoken.TokenValueError):
        rotator.refresh()
    record = storage.read("t")
    assert record is not None and record.value == "Basic good" and record.failures == 1
    assert storage.get("t") == "Basic good"


def test_a_transform_that_raises_is_reported_without_its_message() -> None:
    def leaky(token: str) -> str:
        raise KeyError(token)

    rotator = Rotator("t", awstoken.FunctionSource(lambda: "SECRET"), leaky, MemoryStorage())
    with pytest.raises(awstoken.AwstokenError) as info:
        rotator.refresh()
    assert "KeyError" in str(info.value) and "SECRET" not in str(info.value)


def test_one_refresh_at_a_time_per_name() -> None:
    active = 0
    overlap = 0
    calls = 0
    lock = threading.Lock()

    def slow() -> str:
        nonlocal active, overlap, calls
        with lock:
            active += 1
            calls += 1
            overlap = max(overlap, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return "tok"

    storage = MemoryStorage()
    rotator = Rotator("t", awstoken.FunctionSource(slow), awstoken.template("{token}"), storage,
                      schedule=Schedule(interval=0.01, retry=0.01, poll=0.01))
    rotator.start()
    threads = [threading.Thread(target=rotator.refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: calls >= 5, what="a scheduled refresh after the four asked for")
    rotator.stop()
    assert overlap == 1


def test_leadership_within_one_storage() -> None:
    clock = ManualClock()
    storage = MemoryStorage(clock=clock)
    first = Script(clock)
    second = Script(clock)
    a = Rotator("t", first, awstoken.template("{token}"), storage, clock=clock)
    b = Rotator("t", second, awstoken.template("{token}"), storage, clock=clock)
    a.step()
    b.step()
    assert a.leader and not b.leader
    assert len(first.calls) == 1 and second.calls == []
    a.stop()  # gives leadership up
    b.step()
    assert b.leader


def test_forced_refresh_is_rate_limited() -> None:
    clock = ManualClock()
    source = Script(clock)
    rotator, storage = make(clock, source, min_refresh_gap=10)
    start = clock.now
    rotator.step()
    clock.now += 3
    storage.request_refresh("t")
    rotator.step()
    assert len(source.calls) == 1  # only 3 s since the last refresh
    clock.now = start + 11
    rotator.step()
    assert [round(c - start) for c in source.calls] == [0, 11]
    rotator.step()
    assert len(source.calls) == 2  # the request was served; no more refreshes


def test_refresh_soon_runs_the_source_at_the_next_step_once() -> None:
    # A reload changed the source: the stored token is fresh, and the last refresh was 3 s
    # ago (min_refresh_gap 600), but it is the old source's.
    clock = ManualClock()
    source = Script(clock)
    rotator, _ = make(clock, source, min_refresh_gap=600)
    start = clock.now
    rotator.step()
    clock.now += 3
    rotator.refresh_soon()
    rotator.step()
    rotator.step()
    assert [round(c - start) for c in source.calls] == [0, 3]  # at once, and once


def test_hooks_run_after_a_rotation_and_their_failure_keeps_the_token() -> None:
    seen: list[tuple[str, str, int]] = []

    def record(name: str, fetched: Fetched, token: awstoken.Token) -> None:
        seen.append((name, fetched.token, token.generation))

    def broken(name: str, fetched: Fetched, token: awstoken.Token) -> None:
        raise RuntimeError("hook down")

    storage = MemoryStorage()
    rotator = Rotator("t", awstoken.FunctionSource(lambda: "raw"), awstoken.basic, storage,
                      on_rotate=[broken, record])
    rotator.refresh()
    assert seen == [("t", "raw", 1)]
    assert storage.get("t") == "Basic raw"


def test_schedule_validation() -> None:
    with pytest.raises(awstoken.AwstokenError, match="interval"):
        Schedule(interval=0)
    with pytest.raises(awstoken.AwstokenError, match="max_retry"):
        Schedule(retry=60, max_retry=30)
    with pytest.raises(awstoken.AwstokenError, match="invalid token name"):
        Rotator("../etc", awstoken.FunctionSource(lambda: "x"), awstoken.basic, MemoryStorage())


def test_a_leader_deposed_during_the_fetch_does_not_write() -> None:
    storage = MemoryStorage()
    rotator: Rotator

    def lose_lease_then_answer() -> str:
        assert rotator._lease is not None
        rotator._lease.release()  # as a lapsed Redis lease would
        return "late"

    rotator = Rotator("t", awstoken.FunctionSource(lose_lease_then_answer), awstoken.basic, storage)
    rotator.step()
    assert storage.read("t") is None
    assert rotator.refreshes == 0
