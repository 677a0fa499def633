"""The proxy's 503 says why the token is unavailable: the record's last error, never a value.

A request that finds no usable token first waits (``refresh_wait``, shared by every request
for that token) for a refresh, so a client that comes right after ``serve`` starts gets the
first token rather than a 503; a refresh that failed within the gap answers 503 at once."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, Upstream, running_proxy
from tests.fixtures.wait import wait_until

from .conftest import call

ERROR = "token 'ecr': the command exited with status 3: service is down"


def _settings(upstream: Upstream, refresh_wait: float = 0.2) -> Settings:
    return Settings(server=ServerSettings(refresh_wait=refresh_wait), routes=(
        RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),))


def test_503_carries_the_last_error(upstream: Upstream) -> None:
    storage = MemoryStorage()
    storage.write("ecr", Token(value=None, error=ERROR, error_at=1.0, failures=2))
    with running_proxy(_settings(upstream), Keeper(storage)) as proxy:
        reply = call(proxy.url, "GET", "/v2/x/manifests/latest")
        assert reply.status == 503
        message = json.loads(reply.body)["errors"][0]["message"]
        assert message == ("token 'ecr' is not available yet (refresh failed 2 time(s) in a row; "
                           "last error: the command exited with status 3: service is down)")
        plain = call(proxy.url, "GET", "/simple/")
        assert plain.status == 503
        assert b"last error: the command exited with status 3: service is down" in plain.body
    assert upstream.seen == []


def test_503_of_an_expired_token_carries_the_last_error(upstream: Upstream) -> None:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Basic c2VjcmV0LXZhbHVl", expires_at=2.0, refreshed_at=1.0,
                               generation=1, error=ERROR, error_at=3.0, failures=1))
    with running_proxy(_settings(upstream), Keeper(storage)) as proxy:
        reply = call(proxy.url, "GET", "/simple/")
        assert reply.status == 503
        assert reply.body.startswith(b"token 'ecr' has expired")
        assert b"service is down" in reply.body
        assert b"c2VjcmV0LXZhbHVl" not in reply.body


def test_a_request_before_the_first_token_waits_for_it(upstream: Upstream) -> None:
    storage = MemoryStorage()
    with running_proxy(_settings(upstream, refresh_wait=60), Keeper(storage)) as proxy:
        # The token lands while the request is held (as the first fetch of a just-started
        # serve would); without the wait the request is answered 503 before it lands.
        timer = threading.Timer(0.5, storage.write, ("ecr", Token(
            value="Bearer first-token", expires_at=time.time() + 3600,
            refreshed_at=time.time(), generation=1)))
        timer.start()
        try:
            reply = call(proxy.url, "GET", "/v2/")
        finally:
            timer.join()
        assert reply.status == 200
    assert [dict(seen["headers"]).get("Authorization") for seen in upstream.seen] == [
        "Bearer first-token"]


def test_a_refresh_that_just_failed_is_answered_at_once(upstream: Upstream) -> None:
    storage = MemoryStorage()
    storage.write("ecr", Token(value=None, error=ERROR, error_at=time.time(), failures=1))
    # refresh_wait far beyond the client's timeout: a held request would time the client out.
    with running_proxy(_settings(upstream, refresh_wait=300), Keeper(storage)) as proxy:
        reply = call(proxy.url, "GET", "/v2/", timeout=20)
        assert reply.status == 503
        assert b"service is down" in reply.body
    assert upstream.seen == []


def _answered(proxy: RunningProxy, status_class: str) -> float:
    return sum(float(sample.value) for family in proxy.server.registry.collect()
               if family.name == "awstoken_proxy_requests" for sample in family.samples
               if sample.labels.get("status") == status_class)


def test_a_client_that_leaves_during_the_wait_does_not_end_it_for_others(
        upstream: Upstream) -> None:
    storage = MemoryStorage()
    with running_proxy(_settings(upstream, refresh_wait=60), Keeper(storage)) as proxy:
        host, port = proxy.server.address
        refresher = proxy.server._fast.refresher
        with socket.create_connection((host, port), timeout=10) as leaving:
            leaving.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            # Its request alone started the wait: it is waiting on it now.
            wait_until(lambda: refresher.waiting("ecr"), 30, "the shared wait")
            # Closed with a reset (not a half-close, which the proxy answers all the same):
            # its request is cancelled.
            leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: _answered(proxy, "4xx") == 1, 30, "the client that left (499)")
        assert refresher.waiting("ecr"), "the client that left ended the shared wait"
        replies: list[object] = []

        def ask() -> None:
            try:
                replies.append(call(proxy.url, "GET", "/v2/").status)
            except OSError as exc:
                replies.append(exc)

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        storage.write("ecr", Token(value="Bearer first-token", expires_at=time.time() + 3600,
                                   refreshed_at=time.time(), generation=1))
        for thread in threads:
            thread.join(60)
        assert replies == [200, 200, 200]
        # The wait ends at its next look at the storage (it may find the token after them).
        wait_until(lambda: not refresher.waiting("ecr"), 30, "the wait to end")
    assert [dict(seen["headers"]).get("Authorization") for seen in upstream.seen] == [
        "Bearer first-token"] * 3
