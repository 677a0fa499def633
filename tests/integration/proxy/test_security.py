"""Attacks on the proxy from the security review (issue 10): hostile clients over raw sockets
and hostile upstreams on loopback. Each test failed before its fix (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.proxy import RunningProxy, Upstream, aiohttp_server, raw_upstream, running_proxy
from tests.fixtures.wait import wait_until

from .conftest import call
from .test_bad_http import exchange, statuses

TOKEN = "Bearer security-review-token-0123456789"


def _keeper() -> Keeper:
    storage = MemoryStorage()
    storage.write("ecr", Token(value=TOKEN))
    return Keeper(storage)


def _settings(upstream: str, *, server: ServerSettings | None = None,
              **route: Any) -> Settings:
    return Settings(server=server or ServerSettings(), routes=(
        RouteSettings(prefix="/", upstream=upstream, token="ecr", **route),))


@contextlib.contextmanager
def _redirector() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An upstream that redirects ``/go?to=URL`` to URL; other paths answer with hostile
    headers (cookies, awstoken's own header names)."""
    from aiohttp import web

    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({**request.headers, ":path": request.raw_path})
        if request.path == "/go":
            return web.Response(status=302, headers={"Location": request.query["to"]})
        resp = web.Response(text="target body", content_type="text/plain")
        resp.headers.add("Set-Cookie", "session=stolen; Path=/")
        resp.headers.add("X-Awstoken-Value", "forged")
        resp.headers.add("WWW-Authenticate", 'Basic realm="phish"')
        resp.headers.add("Location", "http://evil.example/")
        resp.headers.add("ETag", '"abc"')
        return resp

    with aiohttp_server(handle) as url:
        yield url, seen


def _go(proxy: RunningProxy, target: str) -> Any:
    return call(proxy.url, "GET", f"/go?to={quote(target, safe='')}")


# -- 1. followed redirects -----------------------------------------------------------------------


def test_followed_redirects_never_reach_the_proxys_own_listeners() -> None:
    """Even a route that allows plain http and private addresses cannot be sent back into
    the proxy: its token endpoint, its admin listener, its own proxy port."""
    server = ServerSettings(token_listen=(("127.0.0.1", 0),))
    with _redirector() as (url, _), running_proxy(
            _settings(url, server=server, follow_http=True, follow_private=True),
            _keeper()) as proxy:
        (token_host, token_port), = proxy.server.token_addresses
        targets = [f"http://{token_host}:{token_port}/token/ecr",
                   f"http://localhost:{token_port}/token/ecr",
                   f"{proxy.admin_url}/metrics", f"{proxy.url}/go?to=x"]
        for target in targets:
            reply = _go(proxy, target)
            assert reply.status == 502, (target, reply.status, reply.body)
            assert reply.header("X-Awstoken-Value") is None
            assert TOKEN.encode() not in reply.body
            assert b"awstoken_" not in reply.body
            assert b"refused" in reply.body
        assert proxy.server.token_listeners.handler.requests.labels("ecr", "204")._value.get() == 0


def test_followed_redirects_refuse_plain_http_and_loopback_by_default(tmp_path: Path) -> None:
    from .test_tls import _pki, https_upstream

    ca, cert, key = _pki(tmp_path, ["localhost", "127.0.0.1"])
    with _redirector() as (url, seen), https_upstream(cert, key) as (tls_port, tls_seen):
        # The route itself is plain http on loopback (trusted config); its redirects are not.
        with running_proxy(_settings(url, server=ServerSettings(ca_file=str(ca))),
                           _keeper()) as proxy:
            port = urlsplit(url).port
            for target in (f"http://localhost:{port}/x", f"https://localhost:{tls_port}/x",
                           f"https://127.0.0.1:{tls_port}/x"):
                reply = _go(proxy, target)
                assert reply.status == 502, (target, reply.status, reply.body)
                assert b"refused" in reply.body
        assert tls_seen == []  # never asked anything over the connection it refused
        assert [s[":path"] for s in seen if not s[":path"].startswith("/go")] == []
        # Plain http allowed, private addresses not: a name resolving to loopback is refused
        # by the address actually connected to.
        with running_proxy(_settings(url, follow_http=True), _keeper()) as proxy:
            reply = _go(proxy, f"http://localhost:{urlsplit(url).port}/x")
            assert reply.status == 502
            assert b"private" in reply.body or b"loopback" in reply.body
        assert [s[":path"] for s in seen if not s[":path"].startswith("/go")] == []


def test_followed_responses_lose_cookies_and_awstoken_headers() -> None:
    with _redirector() as (url, seen), running_proxy(
            _settings(url, follow_http=True, follow_private=True), _keeper()) as proxy:
        reply = _go(proxy, f"http://localhost:{urlsplit(url).port}/target")
        assert (reply.status, reply.body) == (200, b"target body")
        assert reply.header("ETag") == '"abc"'
        assert reply.header("Content-Type", ) == "text/plain; charset=utf-8"
        for name in ("Set-Cookie", "X-Awstoken-Value", "WWW-Authenticate", "Location"):
            assert reply.header(name) is None, name
        assert "Authorization" not in seen[-1]


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:99999/x", "http://127.0.0.1:port/x", "http://[::1", "http://[zz]/x",
    "https://h\u00e9llo.example/x", "http://exa mple/x", "ftp://example/x", "javascript:x",
    "https:///nohost", "https://" + "a" * 20_000 + ".example/"])
def test_malformed_location_is_a_502_with_a_reason(location: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    raw = location.encode("latin-1", "replace") if location.isascii() else location.encode()

    def answer(head: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 302 Found\r\nLocation: " + raw + b"\r\nContent-Length: 0\r\n\r\n", False

    with raw_upstream(answer) as (url, _), running_proxy(
            _settings(url, follow_http=True, follow_private=True), _keeper()) as proxy:
        reply = call(proxy.url, "GET", "/x")
        assert reply.status == 502, (reply.status, reply.body[:200])
        assert b"Location" in reply.body or b"redirect" in reply.body
        assert call(proxy.url, "GET", "/x").status == 502  # still serving
    assert not [r for r in caplog.records if r.exc_info]


# -- 2. methods ----------------------------------------------------------------------------------


def test_trace_and_unknown_methods_are_refused_never_forwarded() -> None:
    def answer(head: bytes) -> tuple[bytes, bool]:  # echoes the request, as TRACE does
        return (b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d\r\n\r\n"
                % len(head) + head), False

    with raw_upstream(answer) as (url, seen), running_proxy(_settings(url), _keeper()) as proxy:
        track = exchange(proxy.url, b"TRACK /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(track) == [400]  # a method llhttp does not know: a parse error
        for method in ("TRACE", "PROPFIND", "MKCOL", "LINK", "PURGE"):
            answer_bytes = exchange(proxy.url, f"{method} /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert statuses(answer_bytes) == [405], (method, answer_bytes[:200])
            assert b"\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in answer_bytes
            assert TOKEN.encode() not in answer_bytes
        assert seen == []
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            assert call(proxy.url, method, "/v2/", body=b"" if method in ("POST", "PUT") else None
                        ).status == 200
        assert len(seen) == 7


# -- 3. Host reflection --------------------------------------------------------------------------


def test_rewritten_bodies_and_locations_name_the_public_url_not_the_clients_host(
        upstream: Upstream) -> None:
    server = ServerSettings(public_url="https://registry.internal.example:8443")
    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        evil = [("Host", "evil.example")]
        meta = call(proxy.url, "GET", "/npm-meta", evil)
        assert b"evil.example" not in meta.body
        assert b"https://registry.internal.example:8443/pkg/-/pkg-1.0.0.tgz" in meta.body
        moved = call(proxy.url, "GET", "/redirect-same", evil)
        assert moved.header("Location") == "https://registry.internal.example:8443/echo?x=1"
        # Upstreams that build URLs from X-Forwarded-Host/Proto (verdaccio) get the same name.
        call(proxy.url, "GET", "/echo", evil)
        forwarded = {k.lower(): v for k, v in upstream.seen[-1]["headers"]}
        assert forwarded["x-forwarded-host"] == "registry.internal.example:8443"
        assert forwarded["x-forwarded-proto"] == "https"
    # Without public_url: the address the client connected to, never its Host header.
    with running_proxy(_settings(upstream.url), _keeper()) as proxy:
        moved = call(proxy.url, "GET", "/redirect-same", [("Host", "evil.example")])
        assert moved.header("Location") == f"{proxy.url}/echo?x=1"


def test_token_endpoint_refuses_foreign_host_names() -> None:
    """DNS rebinding: a browser page whose name now resolves to 127.0.0.1 sends its own Host."""
    settings = Settings(server=ServerSettings(admin_listen=None, token_listen=(("127.0.0.1", 0),)),
                        routes=(RouteSettings(prefix="/", upstream="http://127.0.0.1:9", token="ecr"),))
    with running_proxy(settings, _keeper()) as proxy:
        (host, port), = proxy.server.token_addresses
        base = f"http://{host}:{port}"
        for name in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            reply = call(base, "GET", "/token/ecr", [("Host", name)])
            assert reply.status == 421, (name, reply.status)
            assert reply.header("X-Awstoken-Value") is None
        for name in (f"127.0.0.1:{port}", f"localhost:{port}"):
            reply = call(base, "GET", "/token/ecr", [("Host", name)])
            assert (reply.status, reply.header("X-Awstoken-Value")) == (204, TOKEN)
        assert call(base, "GET", "/token/ecr", [("Host", "awstoken")]).status == 421
    # nginx's `upstream awstoken { server 127.0.0.1:PORT; }` sends `Host: awstoken`.
    named = replace(settings, server=replace(settings.server, token_hosts=("awstoken",)))
    with running_proxy(named, _keeper()) as proxy:
        (host, port), = proxy.server.token_addresses
        base = f"http://{host}:{port}"
        assert call(base, "GET", "/token/ecr", [("Host", "awstoken")]).status == 204
        assert call(base, "GET", "/token/ecr", [("Host", "evil.example")]).status == 421


# -- 5. trailers ---------------------------------------------------------------------------------


def test_chunked_trailers_are_never_promoted_to_headers(upstream: Upstream) -> None:
    with running_proxy(_settings(upstream.url), _keeper()) as proxy:
        request = (b"POST /v2/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Trailer-Smuggled: yes\r\nAuthorization: Basic eDp5\r\n\r\n")
        answer = exchange(proxy.url, request)  # one write: the trailer arrives in the same read
        assert statuses(answer) == [200]
        names = {k.lower() for k, _ in upstream.seen[-1]["headers"]}
        assert "x-trailer-smuggled" not in names
        auths = [v for k, v in upstream.seen[-1]["headers"] if k.lower() == "authorization"]
        assert auths == [TOKEN]


def test_inbound_credentials_in_a_trailer_are_not_accepted(upstream: Upstream,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWSTOKEN_TEST_INBOUND", "inbound-secret")
    server = ServerSettings(bearer_tokens_env="AWSTOKEN_TEST_INBOUND")
    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        request = (b"POST /v2/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nAuthorization: Bearer inbound-secret\r\n\r\n")
        assert statuses(exchange(proxy.url, request)) == [401]
        assert upstream.seen == []
        good = call(proxy.url, "GET", "/v2/", [("Authorization", "Bearer inbound-secret")])
        assert good.status == 200


# -- 11. paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/v2/..;/admin", "/v2/%2e%2e;/admin", "/v2/%252e%252e/admin", "/v2/%c0%ae%c0%ae/admin",
    "/v2/.;/x", "/v2/x;jsessionid=1/../../admin", "/v2/%25%32%65%25%32%65/admin",
    "/v2/%2e%2e%3b/admin", "/v2/x%00y"])
def test_disguised_dot_segments_and_path_parameters_are_refused(path: str) -> None:
    with aiohttp_server(_never) as url, running_proxy(_settings(url), _keeper()) as proxy:
        answer = exchange(proxy.url, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert statuses(answer) == [400], (path, answer[:200])
        assert TOKEN.encode() not in answer


async def _never(request: Any) -> Any:
    raise AssertionError(f"forwarded: {request.raw_path}")


def test_routes_match_the_decoded_path(upstream: Upstream) -> None:
    settings = Settings(routes=(
        RouteSettings(prefix="/v2/secret/", upstream=upstream.url + "/private", token="ecr"),
        RouteSettings(prefix="/v2/", upstream=upstream.url + "/public", token="ecr")))
    with running_proxy(settings, _keeper()) as proxy:
        assert call(proxy.url, "GET", "/v2/%73ecret/x").status == 200
        assert upstream.seen[-1]["raw_path"] == "/private/v2/secret/x"
        # An encoded '/' that would move the request to another route: refused.
        reply = call(proxy.url, "GET", "/v2%2fsecret/x")
        assert reply.status == 400
        # Encoded '/' inside a name (npm scoped packages) still passes, as sent.
        assert call(proxy.url, "GET", "/v2/@scope%2fname").status == 200
        assert upstream.seen[-1]["raw_path"] == "/public/v2/@scope%2fname"


# -- 4. access log -------------------------------------------------------------------------------


def test_access_log_escapes_the_path_as_received(upstream: Upstream,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with running_proxy(_settings(upstream.url), _keeper()) as proxy:
        # Raw control and non-ASCII bytes: the parser refuses them (one line, no bytes quoted).
        raw = exchange(proxy.url, b"GET /v2/x\x1b[2J\x85 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(raw) == [400]
        # A quote would end the path's field: `"GET /v2/x" 200 0 0.001 "` forges one.
        exchange(proxy.url, b'GET /v2/x"_200_0_0.001_" HTTP/1.1\r\nHost: x\r\n\r\n')
        exchange(proxy.url, b"GET /v2/a%0d%0aINFO%20forged%1b[31m HTTP/1.1\r\nHost: x\r\n\r\n")
    for record in caplog.records:
        assert all(" " <= c < "\x7f" for c in record.getMessage()), repr(record.getMessage())
    lines = [r.getMessage() for r in caplog.records if r.name == "awstoken.access"]
    assert len(lines) == 2, lines
    assert '"GET /v2/x\\x22_200_0_0.001_\\x22" ' in lines[0]
    assert "/v2/a%0d%0aINFO%20forged%1b[31m" in lines[1]  # as received, not decoded


# -- 6. upgrades ---------------------------------------------------------------------------------


def test_upgrade_with_a_body_is_refused_at_once(upstream: Upstream) -> None:
    server = ServerSettings(read_timeout=60.0)
    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        parts = urlsplit(proxy.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"POST /v2/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                         b"Upgrade: h2c\r\nContent-Length: 5\r\n\r\nhello")
            answer = sock.recv(65536)  # times out (the test fails) if the proxy hangs
        assert statuses(answer) == [400], answer[:200]
        assert b"upgrade" in answer.lower()
        # Without a body, the upgrade is ignored: a plain answer, then the connection closes.
        answer = exchange(proxy.url, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                     b"Upgrade: websocket\r\n\r\n")
        assert statuses(answer) == [200]
    assert [s["method"] for s in upstream.seen] == ["GET"]


# -- 8. inactivity, not duration -----------------------------------------------------------------


def _raw_request(url: str, head: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    sock.sendall(head)
    return sock


def _read_answer(sock: socket.socket, *, one: bool = False) -> bytes:
    """What arrives until the proxy closes; with ``one``, until one whole answer is in (a
    head and its Content-Length), as a client reads it."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
            if one and sep and length and len(body) >= int(length[1]):
                break
    return data


def test_a_slow_steady_upload_outlives_read_timeout_and_a_stalled_one_does_not(
        upstream: Upstream) -> None:
    server = ServerSettings(read_timeout=1.0)
    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        pieces = 8  # one every 0.25 s: 2 s in all, twice read_timeout
        with _raw_request(proxy.url, b"PUT /v2/blob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n" % (pieces * 1000)) as sock:
            for _ in range(pieces):
                time.sleep(0.25)
                sock.sendall(b"z" * 1000)
            answer = _read_answer(sock)
        assert statuses(answer) == [200], answer[:300]
        assert b'"body_len": 8000' in answer
        # The same upload stalling halfway: cut after read_timeout of silence.
        with _raw_request(proxy.url, b"PUT /v2/blob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Length: 10000\r\n\r\n" + b"z" * 5000) as sock:
            answer = _read_answer(sock, one=True)
        assert statuses(answer) == [504], answer[:300]


def test_a_slow_steady_download_outlives_read_timeout_and_a_client_that_stops_reading_is_cut(
        caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web

    caplog.set_level(logging.WARNING, logger="awstoken.proxy")

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            resp = web.StreamResponse()
            resp.content_length = 8 * 1000  # 2 s in all, twice read_timeout
            await resp.prepare(request)
            for _ in range(8):
                await asyncio.sleep(0.25)
                await resp.write(b"d" * 1000)
            return resp
        resp = web.StreamResponse()
        resp.content_length = BIG
        await resp.prepare(request)
        chunk = b"b" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(BIG // len(chunk)):
                await resp.write(chunk)
        return resp

    server = ServerSettings(read_timeout=1.0)
    with aiohttp_server(handle) as url, running_proxy(_settings(url, server=server),
                                                       _keeper()) as proxy:
        reply = call(proxy.url, "GET", "/slow")
        assert (reply.status, len(reply.body)) == (200, 8_000)
        with _raw_request(proxy.url, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            # Reads nothing until the proxy says it gave up on this client (read_timeout
            # after the client's buffers filled), rather than sleeping a multiple of it.
            wait_until(lambda: "the client stopped reading" in caplog.text, timeout=30,
                       what="the proxy to give up on the client that stopped reading")
            sock.settimeout(5)
            received = len(_read_answer(sock))
        assert received < BIG, received  # cut, not held open forever


BIG = 64 * 1024 * 1024


# -- 9. exhaustion -------------------------------------------------------------------------------


def test_idle_and_trickling_connections_are_capped_and_timed_out(
        upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="awstoken.proxy")
    server = ServerSettings(max_connections=8, head_timeout=1.0, keepalive_timeout=1.0)
    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        parts = urlsplit(proxy.url)
        idle = [socket.create_connection((parts.hostname, parts.port), timeout=10)
                for _ in range(12)]
        try:
            assert call(proxy.admin_url or "", "GET", "/healthz").status == 200
            turned_away = exchange(proxy.url, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert statuses(turned_away) in ([503], []), turned_away[:200]
            limit_lines = [r for r in caplog.records if "max_connections" in r.getMessage()]
            assert len(limit_lines) == 1
            # Once the idle ones time out, new clients are served.
            wait_until(lambda: call(proxy.url, "GET", "/v2/").status == 200, timeout=15)
            # Each idle socket was closed by the proxy: timed out (EOF), or turned away (503).
            answers = []
            for sock in idle:
                sock.settimeout(10)
                answers.append(statuses(_read_answer(sock)))
            assert answers.count([]) == 8 and answers.count([503]) == 4, answers
        finally:
            for sock in idle:
                sock.close()
        # Slowloris: a head trickled a header every 0.3 s never completes: closed.
        with _raw_request(proxy.url, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n") as sock:
            closed = False
            for i in range(40):  # 12 s at most
                time.sleep(0.3)
                try:
                    sock.sendall(b"X-Trickle-%d: y\r\n" % i)
                except OSError:
                    closed = True
                    break
            if not closed:
                sock.settimeout(1)
                closed = _read_answer(sock) == b""
            assert closed
        assert upstream.seen == [] or all(s["raw_path"] == "/v2/" for s in upstream.seen)


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    code = ("import resource; from awstoken.proxy._run.process import raise_open_file_limit\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
            "raise_open_file_limit()\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out


# -- 10. credential checks -----------------------------------------------------------------------


def test_failing_passwords_cannot_starve_the_admin_listener(upstream: Upstream,
                                                             tmp_path: Path) -> None:
    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text("ci:" + bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode() + "\n")
    server = ServerSettings(htpasswd=str(path))
    answers: list[int] = []
    lock = threading.Lock()

    def failing_client() -> None:
        reply = call(proxy.url, "GET", "/v2/", [("Authorization", "Basic Y2k6d3Jvbmc=")],
                     timeout=60)
        with lock:
            answers.append(reply.status)

    with running_proxy(_settings(upstream.url, server=server), _keeper()) as proxy:
        threads = [threading.Thread(target=failing_client) for _ in range(150)]
        for thread in threads:
            thread.start()
        try:
            # The checks are bounded: surplus clients are told to come back (503) at once...
            wait_until(lambda: 503 in answers, timeout=30, what=f"a 503 among {answers}")
            # ... and the admin listener answers while the checks are still queued.
            ready = call(proxy.admin_url or "", "GET", "/readyz", timeout=60)
            pending = 150 - len(answers)
            assert ready.status == 200
            assert pending > 0
        finally:
            for thread in threads:
                thread.join(60)
        assert set(answers) <= {401, 503} and len(answers) == 150
        # A right password still works, and is checked by bcrypt once, then remembered.
        good = [("Authorization", "Basic Y2k6cmlnaHQ=")]
        assert call(proxy.url, "GET", "/v2/", good).status == 200
        assert call(proxy.url, "GET", "/v2/", good).status == 200
