"""The proxy's 503 says why the token is unavailable: the record's last error, never a value."""

from __future__ import annotations

import json

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import Upstream, running_proxy

from .conftest import call

ERROR = "token 'ecr': the command exited with status 3: service is down"


def _settings(upstream: Upstream) -> Settings:
    return Settings(server=ServerSettings(), routes=(
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
