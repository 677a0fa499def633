"""The token endpoint (nginx auth_request) on its own listeners, without any route."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from awstoken import ConfigError, Fetched, Keeper, MemoryStorage
from awstoken._config.settings import RouteSettings, ServerSettings, Settings, TokenSettings
from awstoken.proxy import ProxyServer
from tests.fixtures import processes
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.clock import ManualClock
from tests.fixtures.nginx import request, running_server
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.proxy import LoopThread, Upstream
from tests.fixtures.wait import wait_until

from .conftest import call

VALUE = "Basic " + "QVdTOmVjci10b2tlbi0" * 400  # 7.6 KB: longer than nginx's 4 KiB buffers


def endpoint_settings(*listen: str | tuple[str, int], secret_env: str | None = None,
                      routes: tuple[RouteSettings, ...] = ()) -> Settings:
    # No source brings a missing token here: a request waits refresh_wait for one (see
    # test_token_endpoint_wait.py), kept short for the tests that expect the 503.
    return Settings(tokens={"ecr": TokenSettings(name="ecr"), "pypi": TokenSettings(name="pypi")},
                    server=ServerSettings(listen=("127.0.0.1", 0), admin_listen=None,
                                          token_listen=listen, token_secret_env=secret_env,
                                          refresh_wait=0.2),
                    routes=routes)


def test_answers_on_a_unix_socket_without_any_route(short_dir: Path) -> None:
    sock = str(short_dir / "token.sock")
    keeper = Keeper(MemoryStorage())
    keeper.manage("ecr", lambda: VALUE)
    with running_server(endpoint_settings(sock), keeper) as running:
        assert running.token_addresses == [sock]
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        ok = request(sock, "GET", "/token/ecr")
        assert (ok.status, ok.header("X-Awstoken-Value"), ok.body) == (204, VALUE, b"")
        assert ok.header("Cache-Control") == "max-age=5"
        head = request(sock, "HEAD", "/token/ecr")
        assert (head.status, head.header("X-Awstoken-Value")) == (204, VALUE)
        # Configured but no token yet: 503, never cached.
        none = request(sock, "GET", "/token/pypi")
        assert (none.status, none.header("X-Awstoken-Value")) == (503, None)
        assert none.header("Cache-Control") == "no-store"
        assert none.header("Retry-After") == "1"
        for path in ("/token/nope", "/token/", "/token/ecr/x", "/", "/metrics", "/readyz"):
            reply = request(sock, "GET", path)
            assert (reply.status, reply.header("X-Awstoken-Value")) == (404, None), path
        post = request(sock, "POST", "/token/ecr", body=b"x")
        assert (post.status, post.header("Allow")) == (405, "GET, HEAD")
        assert running.endpoint_count("ecr", "204") == 2
        assert running.endpoint_count("pypi", "503") == 1
    assert not os.path.exists(sock)  # removed at shutdown


def test_loopback_listener_with_a_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWSTOKEN_TEST_TOKEN_SECRET", "s3cret-for-nginx")
    keeper = Keeper(MemoryStorage())
    keeper.manage("ecr", lambda: VALUE)
    settings = endpoint_settings(("127.0.0.1", 0), secret_env="AWSTOKEN_TEST_TOKEN_SECRET")
    with running_server(settings, keeper) as running:
        (address,) = running.token_addresses
        good = {"X-Awstoken-Secret": "s3cret-for-nginx"}
        assert request(address, "GET", "/token/ecr", good).header("X-Awstoken-Value") == VALUE
        for headers in ({}, {"X-Awstoken-Secret": "s3cret-for-nginX"},
                        {"X-Awstoken-Secret": "s3cret-for-nginx-and-more"},
                        {"Authorization": "Bearer s3cret-for-nginx"}):
            # Without the secret, nothing is learnt: not even whether a name exists.
            for path in ("/token/ecr", "/token/nope"):
                reply = request(address, "GET", path, headers)
                assert (reply.status, reply.header("X-Awstoken-Value")) == (403, None)
                assert VALUE.encode() not in reply.body


def test_a_missing_secret_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWSTOKEN_TEST_TOKEN_SECRET", raising=False)
    settings = endpoint_settings(("127.0.0.1", 0), secret_env="AWSTOKEN_TEST_TOKEN_SECRET")
    with pytest.raises(ConfigError, match="AWSTOKEN_TEST_TOKEN_SECRET is empty or unset"):
        ProxyServer(settings, Keeper(MemoryStorage()))


def test_max_age_never_outlives_the_token(short_dir: Path) -> None:
    # The endpoint reads the storage's clock (the one that decides when the token stops
    # being handed out): here a clock the test moves.
    sock = str(short_dir / "token.sock")
    clock = ManualClock(time.time())
    storage = MemoryStorage(clock=clock)
    keeper = Keeper(storage)

    def advance(seconds: float) -> None:
        # Wake the storage's cache thread, which evicts a value at its expiry by this clock.
        clock.now += seconds
        with storage._lock:
            storage._wake.notify_all()

    keeper.manage("ecr", lambda: Fetched("Basic short-lived", clock.now + 14.5))
    keeper.manage("pypi", lambda: Fetched("Basic long-lived", clock.now + 3600))
    settings = endpoint_settings(sock)
    settings = replace(settings, server=replace(settings.server, token_max_age=30.0,
                                                refresh_wait=0.2))
    with running_server(settings, keeper):
        # 14.5 s left, minus the storage's 1 s margin and 10 s for a cache's stale use:
        # at most 3 s in any cache.
        assert request(sock, "GET", "/token/ecr").header("Cache-Control") == "max-age=3"
        assert request(sock, "GET", "/token/pypi").header("Cache-Control") == "max-age=30"
        advance(1)
        assert request(sock, "GET", "/token/ecr").header("Cache-Control") == "max-age=2"
        # Closer to the end: still handed out, but not for caching; then not at all.
        advance(2.2)
        reply = request(sock, "GET", "/token/ecr")
        assert (reply.status, reply.header("Cache-Control")) == (204, "no-store")
        advance(10.2)  # 1.1 s left: inside the storage's 1 s margin + 0.1
        reply = request(sock, "GET", "/token/ecr")
        assert (reply.status, reply.header("Cache-Control")) == (204, "no-store")
        advance(0.2)
        wait_until(lambda: request(sock, "GET", "/token/ecr").status == 503, 10,
                   "503 once the token is inside the storage's margin")
        assert request(sock, "GET", "/token/pypi").header("Cache-Control") == "max-age=30"


def test_the_proxy_and_admin_listeners_do_not_serve_tokens(upstream: Upstream,
                                                            short_dir: Path) -> None:
    sock = str(short_dir / "token.sock")
    keeper = Keeper(MemoryStorage())
    keeper.manage("ecr", lambda: VALUE)
    settings = endpoint_settings(sock, routes=(RouteSettings(prefix="/", upstream=upstream.url,
                                                             token="ecr"),))
    settings = replace(settings, server=replace(settings.server,
                                                admin_listen=("127.0.0.1", free_port())))
    with running_server(settings, keeper) as running:
        host, port = running.server.address
        proxied = call(f"http://{host}:{port}", "GET", "/token/ecr")
        assert proxied.status == 200  # forwarded to the upstream like any other path
        assert upstream.seen[-1]["raw_path"] == "/token/ecr"
        assert proxied.header("X-Awstoken-Value") is None
        admin_host, admin_port = running.server.admin_address
        admin = call(f"http://{admin_host}:{admin_port}", "GET", "/token/ecr")
        assert (admin.status, admin.header("X-Awstoken-Value")) == (404, None)
        assert request(sock, "GET", "/token/ecr").header("X-Awstoken-Value") == VALUE


def test_a_stale_socket_is_replaced_and_a_live_one_refused(short_dir: Path) -> None:
    sock = str(short_dir / "token.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)
    stale.close()  # the file stays, nobody listens: what a killed process leaves behind
    keeper = Keeper(MemoryStorage())
    keeper.manage("ecr", lambda: VALUE)
    with running_server(endpoint_settings(sock), keeper):
        assert request(sock, "GET", "/token/ecr").status == 204
        loop = LoopThread()
        second = ProxyServer(endpoint_settings(sock), keeper)
        try:
            with pytest.raises(ConfigError, match="another process listens on it"):
                loop.run(second.start())
        finally:
            loop.run(second.stop())
            loop.close()
        assert request(sock, "GET", "/token/ecr").status == 204  # the first one still serves
    not_a_socket = short_dir / "file.sock"
    not_a_socket.write_text("x")
    loop = LoopThread()
    third = ProxyServer(endpoint_settings(str(not_a_socket)), keeper)
    try:
        with pytest.raises(ConfigError, match="exists and is not a socket"):
            loop.run(third.start())
    finally:
        loop.run(third.stop())
        loop.close()
    assert not_a_socket.read_text() == "x"


def test_nothing_to_serve_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nothing to serve"):
        ProxyServer(Settings(), Keeper(MemoryStorage()))
    # Tokens alone are a keeper (for the credential doors): valid.
    ProxyServer(Settings(tokens={"ecr": TokenSettings(name="ecr")}), Keeper(MemoryStorage()))


def test_awstoken_serve_runs_only_the_token_endpoint(tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    admin = free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "echo cli-secret-value"
format = "Basic {{token}}"

[server]
listen = "127.0.0.1:{free_port()}"
workers = 2
admin_listen = "127.0.0.1:{admin}"
token_listen = "unix:{sock}"
""")
    processes.issue("Basic cli-secret-value")
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(admin)
        wait_until(lambda: sock.exists() and request(str(sock), "GET", "/token/ecr")
                   .status == 204, 20)
        reply = request(str(sock), "GET", "/token/ecr")
        assert reply.header("X-Awstoken-Value") == "Basic cli-secret-value"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
        processes.expose("awstoken serve", out + err)
    assert f"token endpoint listening on unix:{sock}" in err
    assert "proxy listening" not in err  # no routes: no proxy listener
    assert "cli-secret-value" not in err
    assert not sock.exists()


def test_with_workers_the_parent_serves_the_token_endpoint(tmp_path: Path, short_dir: Path,
                                                           upstream: Upstream) -> None:
    sock = short_dir / "token.sock"
    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "echo worker-token"
format = "Bearer {{token}}"

[server]
listen = "127.0.0.1:{port}"
workers = 2
admin_listen = "127.0.0.1:{admin}"
token_listen = "unix:{sock}"

[[routes]]
prefix = "/"
upstream = "{upstream.url}"
token = "ecr"
""")
    processes.issue("Bearer worker-token")
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_port(port)
        wait_for_port(admin)
        wait_until(lambda: sock.exists() and request(str(sock), "GET", "/token/ecr")
                   .status == 204, 20)
        assert request(str(sock), "GET", "/token/ecr").header("X-Awstoken-Value") == \
            "Bearer worker-token"
        wait_until(lambda: call(f"http://127.0.0.1:{port}", "GET", "/v2/").status == 200, 20)
        metrics = call(f"http://127.0.0.1:{admin}", "GET", "/metrics").body.decode()
        assert 'awstoken_token_endpoint_requests_total{status="204",token="ecr"}' in metrics
        proc.send_signal(signal.SIGTERM)  # the parent stops its workers
        assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        processes.expose("awstoken serve", out + err)
    assert err.count(f"token endpoint listening on unix:{sock}") == 1  # the parent only
    assert not sock.exists()
