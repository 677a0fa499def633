"""Storage health on the admin listener: exported for Redis, absent for local storages,
never a password; /readyz follows the tokens this process holds, not Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from awstoken import FileStorage, Keeper, RedisStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import Upstream, running_proxy
from tests.fixtures.redis import REDIS_PASSWORD, RedisServer

from .conftest import call

VALUE = "Bearer admin-test-value"


def settings_for(upstream: str) -> Settings:
    return Settings(server=ServerSettings(), routes=(
        RouteSettings(prefix="/", upstream=upstream, token="ecr"),))


def token(ttl: float = 600) -> Token:
    now = time.time()
    return Token(value=VALUE, expires_at=now + ttl, refreshed_at=now, generation=1)


def admin(url: str | None, path: str) -> tuple[int, str]:
    assert url is not None
    reply = call(url, "GET", path)
    return reply.status, reply.body.decode()


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_local_storage_exports_no_storage_health(tmp_path: Path, upstream: Upstream) -> None:
    storage = FileStorage(tmp_path / "tokens")
    storage.write("ecr", token())
    with running_proxy(settings_for(upstream.url), Keeper(storage)) as proxy:
        status, metrics = admin(proxy.admin_url, "/metrics")
        assert status == 200 and "awstoken_token_usable" in metrics
        assert "awstoken_storage_" not in metrics
        status, ready = admin(proxy.admin_url, "/readyz")
        assert status == 200 and "storage" not in json.loads(ready)
    storage.close()


def test_redis_health_in_metrics_and_readyz_through_an_outage(
        redis_tcp_auth: RedisServer, upstream: Upstream, tcp_relay: Any) -> None:
    relay = tcp_relay(redis_tcp_auth.port)
    # The password in the URL: the form most likely to leak.
    url = relay.url.replace("redis://", f"redis://:{REDIS_PASSWORD}@")
    storage = RedisStorage(url, lease=2.0, max_backoff=0.2)
    storage.write("ecr", token())
    outputs: list[str] = []
    with running_proxy(settings_for(upstream.url), Keeper(storage)) as proxy:
        status, metrics = admin(proxy.admin_url, "/metrics")
        outputs.append(metrics)
        assert 'awstoken_storage_connected{storage="redis"} 1.0' in metrics
        assert 'awstoken_storage_outages_total{storage="redis"} 0.0' in metrics
        status, ready = admin(proxy.admin_url, "/readyz")
        outputs.append(ready)
        assert status == 200
        assert json.loads(ready)["storage"] == {"type": "redis", "connected": True,
                                                "outages": 0, "errors": 0, "bad_records": 0,
                                                "restarts": 0}
        relay.cut()  # this process loses Redis; the server itself stays up
        wait_until(lambda: not storage.connected, 10)
        assert call(proxy.url, "GET", "/v2/").status == 200  # the cache serves
        status, metrics = admin(proxy.admin_url, "/metrics")
        outputs.append(metrics)
        assert 'awstoken_storage_connected{storage="redis"} 0.0' in metrics
        assert 'awstoken_storage_outages_total{storage="redis"} 1.0' in metrics
        errors = next(line for line in metrics.splitlines()
                      if line.startswith('awstoken_storage_errors_total{storage="redis"}'))
        assert float(errors.split()[-1]) >= 1
        assert 'awstoken_token_usable{token="ecr"} 1.0' in metrics
        status, ready = admin(proxy.admin_url, "/readyz")
        outputs.append(ready)
        answer = json.loads(ready)
        # Ready: the token is here and valid, whatever Redis is doing. The outage shows.
        assert status == 200 and answer["ready"] is True
        assert answer["storage"]["connected"] is False and answer["storage"]["outages"] == 1
    storage.close()
    for text in outputs:
        assert REDIS_PASSWORD not in text and VALUE not in text


def test_readyz_is_not_ready_when_the_cached_token_expires_during_an_outage(
        redis_tcp: RedisServer, upstream: Upstream) -> None:
    storage = RedisStorage(redis_tcp.url, lease=2.0, max_backoff=0.2, margin=0.0)
    storage.write("ecr", token(ttl=2.0))
    with running_proxy(settings_for(upstream.url), Keeper(storage)) as proxy:
        assert admin(proxy.admin_url, "/readyz")[0] == 200
        redis_tcp.stop()
        wait_until(lambda: not storage.connected, 10)
        wait_until(lambda: admin(proxy.admin_url, "/readyz")[0] == 503, 10)
        assert call(proxy.url, "GET", "/v2/").status == 503  # never an expired token
        answer = json.loads(admin(proxy.admin_url, "/readyz")[1])
        assert answer["tokens"]["ecr"]["ready"] is False
        assert answer["storage"]["connected"] is False
    storage.close()
