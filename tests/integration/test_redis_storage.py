"""RedisStorage against a real redis-server, in one process (fleets: test_redis_fleet.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from awstoken import Keeper, RedisStorage, StorageError, Token
from awstoken.storage.redis import _lease_clock
from tests.fixtures.binaries import require_binary
from tests.fixtures.ports import free_port
from tests.fixtures.redis import RedisServer, TcpRelay

Factory = Callable[..., RedisStorage]


@pytest.fixture
def make_storage() -> Iterator[Factory]:
    made: list[RedisStorage] = []

    def make(url: str, **kwargs: Any) -> RedisStorage:
        storage = RedisStorage(url, **kwargs)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def token(value: str = "Bearer v1", *, life: float | None = 300.0, generation: int = 1) -> Token:
    now = time.time()
    return Token(value=value, expires_at=None if life is None else now + life, refreshed_at=now,
                 generation=generation, leader="test")


# -- records ---------------------------------------------------------------------------------

def test_write_read_and_expiry_derived_from_the_token(redis_server: RedisServer,
                                                      make_storage: Factory) -> None:
    storage = make_storage(redis_server.url, expiry_grace=30)
    storage.write("ecr", token(life=300))
    storage.write("forever", token("Basic x", life=None))
    other = make_storage(redis_server.url)
    got = other.read("ecr")
    assert got is not None
    assert got.value == "Bearer v1"
    assert got.generation == 1
    raw = redis_server.client()
    assert 329_000 < raw.pttl("awstoken:token:ecr") <= 330_000  # token life + grace
    assert raw.pttl("awstoken:token:forever") == -1  # no expiry known: no Redis expiry
    assert other.get("forever") == "Basic x"


def test_prefix_separates_deployments(redis_server: RedisServer, make_storage: Factory) -> None:
    make_storage(redis_server.url, prefix="a:").write("t", token("Bearer a"))
    b = make_storage(redis_server.url, prefix="b:")
    assert b.get("t") is None
    assert redis_server.client().exists("a:token:t") == 1


def test_pubsub_brings_new_tokens_without_waiting_for_the_poll(
        redis_server: RedisServer, make_storage: Factory) -> None:
    writer = make_storage(redis_server.url)
    reader = make_storage(redis_server.url, poll=3600)  # only notifications can bring it
    writer.write("t", token("Bearer one"))
    assert reader.get("t") == "Bearer one"
    writer.write("t", token("Bearer two", generation=2))
    wait_until(lambda: reader.values.get("t") == "Bearer two", timeout=5)


def test_revalidation_catches_writes_nobody_announced(
        redis_server: RedisServer, make_storage: Factory) -> None:
    reader = make_storage(redis_server.url, poll=0.2)
    make_storage(redis_server.url).write("t", token("Bearer one"))
    assert reader.get("t") == "Bearer one"
    # A write that bypasses the events channel (say, a message lost while resubscribing).
    redis_server.client().set("awstoken:token:t", token("Bearer two", generation=2).to_json())
    wait_until(lambda: reader.values.get("t") == "Bearer two", timeout=5)


def test_an_older_generation_never_replaces_a_newer_one(
        redis_server: RedisServer, make_storage: Factory) -> None:
    fast = make_storage(redis_server.url)
    slow = make_storage(redis_server.url)
    fast.write("t", token("Bearer new", generation=5))
    slow.write("t", token("Bearer late", generation=4))  # a deposed leader finishing late
    assert slow.get("t") == "Bearer new"  # it adopts the newer record
    stored = Token.from_json(redis_server.client().get("awstoken:token:t"), where="test")
    assert (stored.value, stored.generation) == ("Bearer new", 5)


def test_expired_records_are_not_served(redis_server: RedisServer, make_storage: Factory) -> None:
    storage = make_storage(redis_server.url, margin=0.2)
    storage.write("t", token(life=0.5))
    assert storage.get("t") == "Bearer v1"
    wait_until(lambda: "t" not in storage.values, timeout=5)
    assert storage.get("t") is None


def test_refresh_requests_cross_processes(redis_server: RedisServer, make_storage: Factory) -> None:
    a = make_storage(redis_server.url)
    b = make_storage(redis_server.url)
    assert b.refresh_requested("t") == 0.0
    before = time.time()
    a.request_refresh("t")
    assert b.refresh_requested("t") >= before


# -- leases ------------------------------------------------------------------------------------

def test_lease_is_exclusive_and_released_only_by_its_owner(
        redis_server: RedisServer, make_storage: Factory) -> None:
    a = make_storage(redis_server.url, lease=5)
    b = make_storage(redis_server.url, lease=5)
    lease = a.acquire("t")
    assert lease is not None
    assert lease.held()
    assert b.acquire("t") is None
    raw = redis_server.client()
    # Somebody else holds the key now (say a's lease expired during a long pause).
    raw.set("awstoken:lease:t", "intruder", px=5000)
    lease.release()
    assert raw.get("awstoken:lease:t") == b"intruder"  # compare-and-delete left it alone
    raw.delete("awstoken:lease:t")
    again = b.acquire("t")
    assert again is not None
    assert b.leader("t") == again.owner
    again.release()
    assert raw.exists("awstoken:lease:t") == 0


def test_the_owner_renews_its_lease(redis_server: RedisServer, make_storage: Factory) -> None:
    a = make_storage(redis_server.url, lease=0.6)
    b = make_storage(redis_server.url, lease=0.6)
    lease = a.acquire("t")
    assert lease is not None
    time.sleep(2.0)  # more than three lease lengths
    assert lease.held()
    assert b.acquire("t") is None


def test_a_lease_taken_over_is_lost(redis_server: RedisServer, make_storage: Factory) -> None:
    a = make_storage(redis_server.url, lease=0.8)
    lease = a.acquire("t")
    assert lease is not None
    redis_server.client().set("awstoken:lease:t", "someone-else", px=5000)
    wait_until(lambda: not lease.held(), timeout=5)


def test_a_leader_cut_off_from_redis_stops_before_its_lease_expires(
        redis_tcp: RedisServer, tcp_relay: type[TcpRelay], make_storage: Factory) -> None:
    relay = tcp_relay(redis_tcp.port or 0)
    cut_off = make_storage(relay.url, lease=2.0, timeout=0.5)
    other = make_storage(redis_tcp.url, lease=2.0)
    lease = cut_off.acquire("t")
    assert lease is not None
    raw = redis_tcp.client()
    time.sleep(0.6)  # at least one renewal through the relay
    relay.cut()
    cut_at = _lease_clock()
    while lease.held():
        assert raw.pttl("awstoken:lease:t") > 0, "the lease expired in Redis first"
        time.sleep(0.005)
    stopped_at = _lease_clock()
    remaining = raw.pttl("awstoken:lease:t")
    assert remaining > 0, "held() turned False only after Redis let the lease go"
    assert other.acquire("t") is None
    wait_until(lambda: other.acquire("t") is not None, timeout=5)
    assert stopped_at - cut_at < 2.0
    assert cut_off.outages >= 1
    assert not cut_off.connected


def test_rotator_leadership_moves_when_the_leader_closes(
        redis_server: RedisServer, make_storage: Factory) -> None:
    runs: list[str] = []

    def source(who: str) -> Callable[[], str]:
        def fetch() -> str:
            runs.append(who)
            return f"tok-{who}-{len(runs)}"
        return fetch

    a = Keeper(make_storage(redis_server.url, lease=1.0), interval=3600)
    b = Keeper(make_storage(redis_server.url, lease=1.0), interval=3600)
    ra = a.rotate("t", source("a"), "Bearer {token}")
    wait_until(lambda: a.token("t") is not None)
    rb = b.rotate("t", source("b"), "Bearer {token}")
    wait_until(lambda: b.token("t") == a.token("t"))
    time.sleep(1.5)
    assert runs == ["a"]  # b follows: it did not run its source
    assert ra.leader
    assert not rb.leader
    ra.stop()  # releases the lease
    wait_until(lambda: rb.leader, timeout=5)
    assert runs == ["a"]  # the new leader reads the record: not due, nothing to run
    rb.stop()


# -- Redis unavailable ----------------------------------------------------------------------

def test_outage_serves_cache_counts_and_restores_after_an_empty_restart(
        redis_server: RedisServer, make_storage: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "awstoken")
    a = make_storage(redis_server.url, max_backoff=0.2)
    b = make_storage(redis_server.url, max_backoff=0.2)
    a.write("t", token("Bearer kept", generation=7))
    assert b.get("t") == "Bearer kept"
    redis_server.stop()
    wait_until(lambda: not b.connected, timeout=5)
    for _ in range(200):
        assert b.get("t") == "Bearer kept"
    assert b.read("t") is not None  # the last record seen, while Redis is away
    assert b.outages == 1
    assert b.errors >= 1
    redis_server.start()  # empty: --save '' --appendonly no
    wait_until(lambda: redis_server.client().exists("awstoken:token:t"), timeout=5)
    stored = Token.from_json(redis_server.client().get("awstoken:token:t"), where="test")
    assert (stored.value, stored.generation) == ("Bearer kept", 7)
    wait_until(lambda: a.connected and b.connected, timeout=5)
    assert b.outages == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages)
    assert any("reachable again" in m for m in messages)
    assert any("wrote back" in m for m in messages)


def test_a_write_during_an_outage_reaches_redis_when_it_returns(
        redis_server: RedisServer, make_storage: Factory) -> None:
    writer = make_storage(redis_server.url, max_backoff=0.2)
    writer.write("t", token("Bearer old", generation=1))
    redis_server.client().shutdown(nosave=True)
    redis_server.stop()
    with pytest.raises(StorageError) as info:
        writer.write("t", token("Bearer new", generation=2))
    assert "unavailable" in str(info.value) or "Connection" in str(info.value)
    assert writer.get("t") == "Bearer new"  # served from memory meanwhile
    redis_server.start()
    wait_until(lambda: redis_server.client().get("awstoken:token:t") is not None, timeout=5)
    stored = Token.from_json(redis_server.client().get("awstoken:token:t"), where="test")
    assert (stored.value, stored.generation) == ("Bearer new", 2)


def test_get_of_an_unknown_name_during_an_outage_is_none_then_catches_up(
        redis_server: RedisServer, make_storage: Factory) -> None:
    reader = make_storage(redis_server.url, poll=0.2, max_backoff=0.2)
    redis_server.stop()
    wait_until(lambda: not reader.connected, timeout=5)
    assert reader.get("late") is None
    redis_server.start()
    make_storage(redis_server.url).write("late", token("Bearer late"))
    wait_until(lambda: reader.values.get("late") == "Bearer late", timeout=5)


# -- secrets, TLS ---------------------------------------------------------------------------

PASSWORD = "pw-Zq8wXr4u"


@pytest.fixture
def redis_with_password(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(redis_server.binary, tmp_path / "auth", extra=["--requirepass", PASSWORD])
    server.client_options = {"password": PASSWORD}
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


def test_passwords_never_reach_logs_errors_or_repr(
        redis_with_password: RedisServer, make_storage: Factory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_storage(f"unix://:{PASSWORD}@{redis_with_password.socket}")
    good.write("t", token())
    assert good.get("t") == "Bearer v1"
    assert PASSWORD not in repr(good)
    by_keyword = make_storage(f"unix://{redis_with_password.socket}", password=PASSWORD)
    assert by_keyword.get("t") == "Bearer v1"
    wrong = make_storage(f"unix://:wrong-{PASSWORD}@{redis_with_password.socket}",
                         max_backoff=0.1)
    with pytest.raises(StorageError) as info:
        wrong.read("other")
    wait_until(lambda: wrong.outages == 1, timeout=5)
    text = str(info.value) + repr(wrong) + caplog.text
    assert PASSWORD not in text
    assert "Bearer v1" not in caplog.text
    assert "***" in str(info.value)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def test_rediss_with_a_private_ca(tmp_path: Path, redis_server: RedisServer,
                                  make_storage: Factory) -> None:
    require_binary("openssl")

    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=awstoken test CA",
             # Python 3.13 verifies strictly: a CA without keyUsage is refused.
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n"
                           "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext", cwd=d)
    port = free_port()
    server = RedisServer(redis_server.binary, d, port=port, extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", "server.crt",
        "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
        "--tls-auth-clients", "no"])
    server.scheme = "rediss"
    server.client_options = {"ssl_ca_certs": str(d / "ca.crt")}
    server.start()
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        storage = make_storage(url, redis_options={"ssl_ca_certs": str(d / "ca.crt")})
        storage.write("t", token("Bearer tls"))
        assert make_storage(url, redis_options={"ssl_ca_certs": str(d / "ca.crt")}).get("t") \
            == "Bearer tls"
        untrusting = make_storage(url)  # the system CAs do not know ours
        with pytest.raises(StorageError):
            untrusting.read("t")
    finally:
        server.stop()


FORK_SCRIPT = """
import os, sys, time
from awstoken import RedisStorage, Token
storage = RedisStorage(sys.argv[1], lease=5)
storage.write("t", Token(value="Bearer parent", refreshed_at=time.time(), generation=1))
lease = storage.acquire("t")
assert lease is not None
pid = os.fork()
if pid == 0:
    # The child: a follower with its own connections and threads.
    ok = storage.get("t") == "Bearer parent" and storage.acquire("t") is None
    storage.write("t", Token(value="Bearer child", refreshed_at=time.time(), generation=2))
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
deadline = time.monotonic() + 5
while storage.values.get("t") != "Bearer child" and time.monotonic() < deadline:
    time.sleep(0.01)
print(os.waitstatus_to_exitcode(status), storage.values.get("t"), lease.held())
storage.close()
"""


def test_after_fork_the_child_follows_and_the_parent_keeps_leading(
        redis_server: RedisServer) -> None:
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, redis_server.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "Bearer", "child", "True"]


def test_a_renewal_in_flight_cannot_revive_a_released_lease(
        redis_server: RedisServer, make_storage: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_storage(redis_server.url, lease=4)
    b = make_storage(redis_server.url, lease=4)
    lease = a.acquire("t")
    assert lease is not None
    raw = redis_server.client()
    renewing = threading.Event()
    real_call = a._call

    def slow_renewal(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        if what == "renewing a lease":
            renewing.set()
            time.sleep(0.5)  # the key vanishes meanwhile (as after a Redis restart)
        return real_call(what, func, *args, **kwargs)

    monkeypatch.setattr(a, "_call", slow_renewal)
    a._lease_wake.set()  # renew now
    assert renewing.wait(5)
    raw.delete("awstoken:lease:t")
    lease.release()  # waits for the renewal, then deletes what it took back
    time.sleep(1.0)  # long enough for a renewal that did not wait to land
    assert raw.exists("awstoken:lease:t") == 0
    again = b.acquire("t")
    assert again is not None
    again.release()
