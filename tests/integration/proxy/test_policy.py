"""Token refresh on 401, inbound authentication, admin endpoints, logs without secrets."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest

from awstoken import FunctionSource, Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.binaries import require_binary
from tests.fixtures.proxy import Upstream, running_proxy

from .conftest import call


def test_upstream_401_refreshes_once_and_retries(upstream: Upstream) -> None:
    values = iter(["Bearer old", "Bearer new", "Bearer newer"])
    calls: list[int] = []
    lock = threading.Lock()

    def source() -> str:
        with lock:
            calls.append(1)
            return next(values)

    keeper = Keeper(MemoryStorage())
    keeper.rotate("ecr", FunctionSource(source), min_refresh_gap=0.1)
    try:
        keeper.rotators["ecr"].schedule  # noqa: B018
        for _ in range(100):
            if keeper.token("ecr"):
                break
            threading.Event().wait(0.05)
        assert keeper.token("ecr") == "Bearer old"
        _past_refresh_gap(keeper, "ecr", 0.1)
        upstream.accept_tokens = {"Bearer new"}
        settings = Settings(routes=(RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),))
        with running_proxy(settings, keeper) as proxy:
            reply = call(proxy.url, "GET", "/v2/x/manifests/latest")
            assert reply.status == 200
            sent = [{k.lower(): v for k, v in s["headers"]}["authorization"] for s in upstream.seen]
            assert sent == ["Bearer old", "Bearer new"]
            # A refused request with a body asks for the refresh too, and is replayed once
            # with its body; a refusal of the refreshed token is final.
            _past_refresh_gap(keeper, "ecr", 0.1)
            upstream.accept_tokens = {"Bearer never"}
            upstream.seen.clear()
            upload = call(proxy.url, "PUT", "/v2/x/blobs/uploads/1", body=b"data")
            assert upload.status == 401
            assert len(calls) == 3
            assert [(s["method"], s["body_len"]) for s in upstream.seen] == [("PUT", 4)] * 2
            sent = [{k.lower(): v for k, v in s["headers"]}["authorization"] for s in upstream.seen]
            assert sent == ["Bearer new", "Bearer newer"]
            metrics = call(proxy.admin_url or "", "GET", "/metrics").body.decode()
            assert 'awstoken_proxy_token_retries_total{route="/"} 2.0' in metrics
    finally:
        keeper.stop()
    assert len(calls) == 3


def _past_refresh_gap(keeper: Keeper, name: str, gap: float) -> None:
    """Wait until the last refresh of ``name`` is older than ``gap``: a refusal of a token
    fetched more recently is final (no refresh would run), as the proxy decides."""
    record = keeper.record(name)
    assert record is not None
    while time.time() - record.refreshed_at <= gap:
        threading.Event().wait(0.02)


def _server(**kw: object) -> ServerSettings:
    return ServerSettings(**kw)  # type: ignore[arg-type]


def test_inbound_basic_htpasswd_bcrypt(upstream: Upstream, tmp_path: Path) -> None:
    htpasswd = require_binary("htpasswd")
    path = tmp_path / "htpasswd"
    subprocess.run([htpasswd, "-B", "-C", "4", "-b", "-c", str(path), "ci", "s3cret"], check=True,
                   capture_output=True)
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer upstream"))
    settings = Settings(server=_server(htpasswd=str(path)),
                        routes=(RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),))
    with running_proxy(settings, Keeper(storage)) as proxy:
        denied = call(proxy.url, "GET", "/v2/")
        assert denied.status == 401
        assert denied.header("WWW-Authenticate") == 'Basic realm="awstoken"'
        assert json.loads(denied.body)["errors"][0]["code"] == "UNAUTHORIZED"
        wrong = call(proxy.url, "GET", "/x", [("Authorization", "Basic Y2k6d3Jvbmc=")])  # ci:wrong
        assert wrong.status == 401
        unknown = call(proxy.url, "GET", "/x", [("Authorization", "Basic bm9ib2R5OnMzY3JldA==")])
        assert unknown.status == 401
        assert upstream.seen == []
        for _ in range(2):  # the second time comes from the verified cache
            ok = call(proxy.url, "GET", "/x", [("Authorization", "Basic Y2k6czNjcmV0")])  # ci:s3cret
            assert ok.status == 200
        headers = upstream.seen[-1]["headers"]
        assert [v for k, v in headers if k.lower() == "authorization"] == ["Bearer upstream"]
        # Removing the user from the file takes effect without a restart.
        path.write_text("")
        assert call(proxy.url, "GET", "/x", [("Authorization", "Basic Y2k6czNjcmV0")]).status == 401


def test_inbound_bearer_and_networks(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_TOKENS", "alpha, beta")
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer upstream"))
    route = (RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),)
    with running_proxy(Settings(server=_server(bearer_tokens_env="PROXY_TOKENS"), routes=route),
                       Keeper(storage)) as proxy:
        assert call(proxy.url, "GET", "/x", [("Authorization", "Bearer beta")]).status == 200
        assert call(proxy.url, "GET", "/x", [("Authorization", "Bearer gamma")]).status == 401
        assert call(proxy.url, "GET", "/x").status == 401
    with running_proxy(Settings(server=_server(allow=("10.0.0.0/8",)), routes=route),
                       Keeper(storage)) as proxy:
        assert call(proxy.url, "GET", "/x").status == 403
    with running_proxy(Settings(server=_server(allow=("127.0.0.0/8", "::1/128")), routes=route),
                       Keeper(storage)) as proxy:
        assert call(proxy.url, "GET", "/x").status == 200


def test_admin_endpoints_never_show_token(upstream: Upstream,
                                          caplog: pytest.LogCaptureFixture) -> None:
    secret = "Basic c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw=="
    storage = MemoryStorage()
    storage.write("ecr", Token(value=secret, expires_at=4e9, refreshed_at=1.0, generation=3))
    # The 503 for the token that has no record comes after refresh_wait (5 s by default):
    # what the wait does is test_unavailable_reason's; here it only delays the answer.
    settings = Settings(server=_server(refresh_wait=0.1),
                        routes=(RouteSettings(prefix="/", upstream=upstream.url, token="ecr"),
                                RouteSettings(prefix="/npm/", upstream=upstream.url, token="npm")))
    caplog.set_level(logging.DEBUG)
    with running_proxy(settings, Keeper(storage)) as proxy:
        admin = proxy.admin_url or ""
        assert call(proxy.url, "GET", "/v2/x?secret=q").status == 200
        assert call(proxy.url, "GET", "/npm/x").status == 503
        assert call(admin, "GET", "/healthz").body == b"ok\n"
        ready = call(admin, "GET", "/readyz")
        assert ready.status == 503
        report = json.loads(ready.body)
        assert report["tokens"]["ecr"]["ready"] is True
        assert report["tokens"]["npm"] == {"ready": False, "error": "no token yet"}
        storage.write("npm", Token(value="Bearer npm-secret"))
        assert call(admin, "GET", "/readyz").status == 200
        metrics = call(admin, "GET", "/metrics").body.decode()
        assert 'awstoken_token_usable{token="ecr"} 1.0' in metrics
        assert 'awstoken_token_expires_in_seconds{token="ecr"}' in metrics
        assert 'awstoken_proxy_requests_total{route="/",status="2xx"} 1.0' in metrics
        assert 'awstoken_proxy_requests_total{route="/npm/",status="5xx"} 1.0' in metrics
        assert 'awstoken_proxy_upstream_seconds_count{route="/"} 1.0' in metrics
        everything = metrics + ready.body.decode() + caplog.text
        assert "c2VjcmV0" not in everything and "npm-secret" not in everything
    access = [r.getMessage() for r in caplog.records if r.name == "awstoken.access"]
    assert any('"GET /v2/x" 200' in line for line in access)
    assert not any("secret=q" in line or "Authorization" in line for line in access)
