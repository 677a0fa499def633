"""The admin listener and the token endpoint are the proxy's own HTTP/1.1 server (``_local``),
attacked the way the proxy listener is (test_bad_http.py), over raw sockets.

What matters most is the token endpoint: a 204 from it carries a token. A request hidden in
another one's body is never answered, a malformed one never breaks the listener, and
clients that hold connections open cannot keep others out for long.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import ServerSettings, Settings, TokenSettings
from tests.fixtures.nginx import RunningServer, running_server

from .test_bad_http import BAD_REQUESTS, exchange, statuses

VALUE = "Bearer local-listener-token-0123456789"


@contextmanager
def listeners(**server: Any) -> Iterator[tuple[RunningServer, str, str]]:
    """The admin listener and a TCP token endpoint (no routes); yields their URLs."""
    storage = MemoryStorage()
    storage.write("ecr", Token(value=VALUE))
    settings = Settings(tokens={"ecr": TokenSettings(name="ecr")}, server=replace(
        ServerSettings(admin_listen=("127.0.0.1", 0), token_listen=(("127.0.0.1", 0),)),
        **server))
    with running_server(settings, Keeper(storage)) as running:
        admin = running.server.admin_address
        (token,) = running.token_addresses
        assert admin is not None and isinstance(token, tuple)
        yield running, f"http://{admin[0]}:{admin[1]}", f"http://{token[0]}:{token[1]}"


@pytest.fixture(scope="module")
def local() -> Iterator[tuple[RunningServer, str, str]]:
    with listeners() as urls:
        yield urls


def _get(url: str, path: str, host: str | None = None) -> bytes:
    host = host or url.removeprefix("http://")
    return exchange(url, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), quiet=0.05)


def _smuggling(request: bytes, host: str) -> bytes:
    """``request`` with its hidden request asking for the token, on this listener."""
    return request.replace(b"/v2/smuggled", b"/token/ecr").replace(b"Host: x", b"Host: " +
                                                                      host.encode())


def test_malformed_and_smuggled_requests_get_no_token_and_break_nothing(
        local: tuple[RunningServer, str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _, admin, token = local
    for url in (admin, token):
        host = url.removeprefix("http://")
        for name, data in BAD_REQUESTS.items():
            answer = exchange(url, _smuggling(data, host), quiet=0.05)
            codes = statuses(answer)
            assert codes and all(400 <= code < 500 for code in codes), (url, name, answer[:300])
            assert VALUE.encode() not in answer, (url, name)
        assert statuses(_get(url, "/healthz" if url == admin else "/token/ecr")) == [
            200 if url == admin else 204]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_pipelined_requests_are_answered_in_order(local: tuple[RunningServer, str, str]) -> None:
    _, admin, token = local
    host = token.removeprefix("http://")
    ask = "GET {} HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
    answer = exchange(token, "".join(ask.format(p) for p in (
        "/token/ecr", "/token/nope", "/token/%65cr?x=1", "/metrics")).encode())
    assert statuses(answer) == [204, 404, 204, 404]
    assert answer.count(f"X-Awstoken-Value: {VALUE}\r\n".encode()) == 2
    answer = exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                             b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
                             b"GET /token/ecr HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 200, 404]
    assert VALUE.encode() not in answer  # the admin listener never reads out a token
    head = answer.split(b"HTTP/1.1 200 OK\r\n")[2].split(b"HTTP/1.1 404")[0]
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length > 0 and head.endswith(b"\r\n\r\n")  # HEAD: the length, no body


def test_a_token_request_with_a_body_is_refused_and_the_body_never_parsed(
        local: tuple[RunningServer, str, str]) -> None:
    _, _, token = local
    host = token.removeprefix("http://")
    hidden = f"GET /token/ecr HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    answer = exchange(token, f"POST /token/ecr HTTP/1.1\r\nHost: {host}\r\n"
                             f"Content-Length: {len(hidden)}\r\n\r\n".encode() + hidden)
    assert statuses(answer) == [405]
    assert VALUE.encode() not in answer


def test_clients_that_send_nothing_are_closed_and_the_connection_limit_holds(
        caplog: pytest.LogCaptureFixture) -> None:
    with listeners(head_timeout=0.5, max_connections=2) as (_, admin, token):
        for url in (admin, token):
            port = int(url.rsplit(":", 1)[1])
            held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
            try:
                # Beyond max_connections: 503 at once (the idle two still count).
                assert statuses(exchange(url, b"")) == [503]
                for sock in held:  # then each silent client is closed (head_timeout)
                    assert sock.recv(1024) == b""
            finally:
                for sock in held:
                    sock.close()
            host = url.removeprefix("http://")
            assert statuses(_get(url, "/healthz" if url == admin else "/token/ecr", host)) in (
                [200], [204])
    # One warning per listener, naming it.
    limits = [r.getMessage() for r in caplog.records if "max_connections (2)" in r.getMessage()]
    assert [m.split(":")[1].strip() for m in limits] == ["admin listener", "token endpoint"]
