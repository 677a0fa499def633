"""Forwarding behaviour against a stand-in upstream: headers, bodies, HEAD, Range, redirects."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, Upstream, no_auth_server, running_proxy

from .conftest import call

TOKEN = "Basic QVdTOnNlY3JldC10b2tlbg=="


def make_keeper(value: str | None = TOKEN, *, expires_at: float | None = None) -> Keeper:
    storage = MemoryStorage()
    if value is not None:
        storage.write("ecr", Token(value=value, expires_at=expires_at, refreshed_at=1.0, generation=1))
    return Keeper(storage)


def settings_for(upstream: str, *, refresh_wait: float = 5.0, **route: object) -> Settings:
    return Settings(server=ServerSettings(refresh_wait=refresh_wait), routes=(
        RouteSettings(prefix="/", upstream=upstream, token="ecr", **route),))  # type: ignore[arg-type]


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[RunningProxy]:
    with running_proxy(settings_for(upstream.url), make_keeper()) as running:
        yield running


def seen_headers(upstream: Upstream) -> list[tuple[str, str]]:
    return [(k, v) for k, v in upstream.seen[-1]["headers"]]


def test_token_attached_and_client_authorization_removed(proxy: RunningProxy,
                                                         upstream: Upstream) -> None:
    reply = call(proxy.url, "GET", "/v2/", [("Authorization", "Basic Y2xpZW50OnB3")])
    assert reply.status == 200
    auth = [v for k, v in seen_headers(upstream) if k.lower() == "authorization"]
    assert auth == [TOKEN]


def test_repeated_headers_kept_and_hop_by_hop_dropped(proxy: RunningProxy, upstream: Upstream) -> None:
    accepts = ["application/vnd.oci.image.manifest.v1+json",
               "application/vnd.docker.distribution.manifest.v2+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"]
    call(proxy.url, "GET", "/v2/x/manifests/latest",
         [("Accept", a) for a in accepts] + [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
                                             ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                                             ("Proxy-Authorization", "Basic eA==")])
    headers = seen_headers(upstream)
    assert [v for k, v in headers if k.lower() == "accept"] == accepts
    names = {k.lower() for k, _ in headers}
    assert not names & {"x-hop", "keep-alive", "te", "proxy-authorization"}


def test_host_and_forwarded_headers(proxy: RunningProxy, upstream: Upstream) -> None:
    call(proxy.url, "GET", "/echo", [("Host", "registry.example:5000"),
                                     ("X-Forwarded-For", "10.1.2.3")])
    headers = {k.lower(): v for k, v in seen_headers(upstream)}
    assert headers["host"] == upstream.url.removeprefix("http://")
    assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    # The address the client reached, never its Host header (server.public_url sets it).
    assert headers["x-forwarded-host"] == proxy.url.removeprefix("http://")


def test_path_and_query_pass_encoded(proxy: RunningProxy, upstream: Upstream) -> None:
    call(proxy.url, "GET", "/@scope%2fname?x=a%20b&y=1")
    assert upstream.seen[-1]["raw_path"] == "/@scope%2fname?x=a%20b&y=1"


def test_response_repeated_headers_and_connection_tokens(proxy: RunningProxy) -> None:
    reply = call(proxy.url, "GET", "/multi")
    assert reply.all("X-Multi") == ["one", "two"]
    assert reply.header("X-Secret-Hop") is None


def test_upload_streams_with_length(proxy: RunningProxy, upstream: Upstream) -> None:
    body = os.urandom(3 * 1024 * 1024)
    reply = call(proxy.url, "PUT", "/v2/x/blobs/uploads/1?digest=sha256:abc", body=body)
    assert reply.status == 200
    seen = upstream.seen[-1]
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ("Content-Length", str(len(body))) in [tuple(h) for h in seen["headers"]]


def test_head_stays_head_and_range_passes(tmp_path: Path, proxy: RunningProxy, upstream: Upstream) -> None:
    data = os.urandom(200_000)
    (tmp_path / "upstream-files" / "blob").write_bytes(data)
    head = call(proxy.url, "HEAD", "/file/blob")
    assert head.status == 200
    assert head.header("Content-Length") == str(len(data))
    assert head.body == b""
    assert upstream.seen[-1]["method"] == "HEAD"
    part = call(proxy.url, "GET", "/file/blob", [("Range", "bytes=100-199")])
    assert part.status == 206
    assert part.body == data[100:200]
    assert part.header("Content-Range") == f"bytes 100-199/{len(data)}"
    whole = call(proxy.url, "GET", "/file/blob")
    assert whole.body == data


def test_same_host_location_rewritten(proxy: RunningProxy) -> None:
    reply = call(proxy.url, "GET", "/redirect-same")
    assert reply.status == 302
    assert reply.header("Location") == f"{proxy.url}/echo?x=1"
    relative = call(proxy.url, "POST", "/relative-location", body=b"")
    assert relative.header("Location") == "/v2/x/blobs/uploads/abc?_state=1"


def test_redirect_followed_without_token(upstream: Upstream) -> None:
    # Loopback and plain http stand in for S3 here: the route must allow them.
    with no_auth_server() as (s3, s3_seen), running_proxy(
            settings_for(upstream.url, follow_http=True, follow_private=True),
            make_keeper()) as proxy:
        upstream.redirect_to = f"{s3}/bucket/blob?X-Amz-Signature=abc"
        reply = call(proxy.url, "GET", "/redirect-other", [("Authorization", "Basic Y2xpZW50OnB3"),
                                                           ("Range", "bytes=0-")])
        assert reply.status == 200
        assert reply.body == b"blob-from-s3" * 1000
        assert len(s3_seen) == 1
        assert "Authorization" not in s3_seen[0]
        assert TOKEN not in json.dumps(s3_seen)
        assert s3_seen[0]["Range"] == "bytes=0-"


def test_redirect_passed_when_configured(upstream: Upstream) -> None:
    with no_auth_server() as (s3, s3_seen), \
            running_proxy(settings_for(upstream.url, redirects="pass"), make_keeper()) as proxy:
        upstream.redirect_to = f"{s3}/bucket/blob"
        reply = call(proxy.url, "GET", "/redirect-other")
        assert reply.status == 307
        assert reply.header("Location") == f"{s3}/bucket/blob"
        assert s3_seen == []


def test_npm_metadata_tarball_urls_rewritten(proxy: RunningProxy, upstream: Upstream) -> None:
    reply = call(proxy.url, "GET", "/npm-meta", [("Host", "proxy.internal:8080")])
    meta = json.loads(reply.body)
    # The address the client connected to (server.public_url names another), not its Host.
    assert meta["versions"]["1.0.0"]["dist"]["tarball"] == f"{proxy.url}/pkg/-/pkg-1.0.0.tgz"
    assert meta["other"] == "http://elsewhere.example/pkg.tgz"
    assert reply.header("Content-Length") == str(len(reply.body))


def test_pip_simple_absolute_links_rewritten_under_prefix(upstream: Upstream) -> None:
    settings = Settings(routes=(RouteSettings(prefix="/pypi/", upstream=upstream.url + "/",
                                              token="ecr", strip_prefix=True),))
    with running_proxy(settings, make_keeper()) as proxy:
        reply = call(proxy.url, "GET", "/pypi/simple-page")
        assert upstream.seen[-1]["raw_path"] == "/simple-page"
        page = reply.body.decode()
        assert f'href="{proxy.url}/pypi/packages/p-1.0.tar.gz#sha256=00"' in page
        assert 'href="../../packages/q-1.0.tar.gz"' in page


# A request that finds no usable token waits up to refresh_wait for one (what that wait does
# is test_unavailable_reason's); these tests are about the 503 after it, so the wait is short.
def test_no_token_is_503_docker_json_and_nothing_forwarded(upstream: Upstream) -> None:
    with running_proxy(settings_for(upstream.url, refresh_wait=0.1), make_keeper(None)) as proxy:
        reply = call(proxy.url, "GET", "/v2/x/manifests/latest")
        assert reply.status == 503
        error = json.loads(reply.body)["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert "'ecr'" in error["message"]
        plain = call(proxy.url, "GET", "/simple/")
        assert plain.status == 503
        assert plain.body.startswith(b"token 'ecr' is not available")
    assert upstream.seen == []


def test_expired_token_is_503(upstream: Upstream) -> None:
    with running_proxy(settings_for(upstream.url, refresh_wait=0.1),
                       make_keeper(expires_at=2.0)) as proxy:
        reply = call(proxy.url, "GET", "/v2/")
        assert reply.status == 503
        assert b"expired" in reply.body
    assert upstream.seen == []


def test_longest_prefix_wins_and_unknown_path_404(upstream: Upstream) -> None:
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Bearer one"))
    storage.write("ca", Token(value="Bearer two"))
    settings = Settings(routes=(
        RouteSettings(prefix="/npm", upstream=upstream.url + "/base", token="ca", strip_prefix=True),
        RouteSettings(prefix="/npm/special", upstream=upstream.url, token="ecr"),
    ))
    with running_proxy(settings, Keeper(storage)) as proxy:
        call(proxy.url, "GET", "/npm/special/x")
        assert upstream.seen[-1]["raw_path"] == "/npm/special/x"
        assert ["Authorization", "Bearer one"] in upstream.seen[-1]["headers"]
        call(proxy.url, "GET", "/npm/lodash")
        assert upstream.seen[-1]["raw_path"] == "/base/lodash"
        assert ["Authorization", "Bearer two"] in upstream.seen[-1]["headers"]
        assert call(proxy.url, "GET", "/npmx").status == 404
        assert call(proxy.url, "GET", "/other").status == 404


def test_custom_header_route(upstream: Upstream) -> None:
    settings = Settings(routes=(RouteSettings(prefix="/", upstream=upstream.url, token="ecr",
                                              header="X-Api-Token"),))
    with running_proxy(settings, make_keeper()) as proxy:
        call(proxy.url, "GET", "/x", [("X-Api-Token", "client-value"), ("Authorization", "Basic eDp5")])
    headers = upstream.seen[-1]["headers"]
    assert [v for k, v in headers if k.lower() == "x-api-token"] == [TOKEN]
    assert not [v for k, v in headers if k.lower() == "authorization"]
