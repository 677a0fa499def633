"""``awstoken serve`` as a real process: SIGHUP reloads, a failed start fails.

Reload: routes and tokens added, changed and removed while a request is in flight; an
invalid file is logged once and the running configuration kept. Start: a listener that
cannot bind stops everything, non-zero, before any source runs (a counting command).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures.cli import awstoken_cli
from tests.fixtures.faults import children
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.proxy import Upstream
from tests.fixtures.wait import wait_until

from .conftest import call

# The command line of a worker process (the parent's rotator runs commands of its own).
WORKER = b"awstoken.proxy._run.worker"


class Serving:
    """A running ``awstoken serve`` whose log (stderr) goes to a file readable meanwhile."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, base: str) -> None:
        self.proc = proc
        self.log_path = log
        self.base = base

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        wait_until(lambda: self.log.count(text) >= count or self.proc.poll() is not None,
                   timeout, f"{count} x {text!r} in the log {self.log_path} (or an exit)")
        assert self.log.count(text) >= count, f"no {text!r} in the log:\n{self.log}"

    def token_seen(self, path: str) -> str | None:
        reply = call(self.base, "GET", path)
        if reply.status != 200:
            return f"status {reply.status}"
        headers = {k.lower(): v for k, v in json.loads(reply.body)["headers"]}
        return headers.get("authorization")


@contextmanager
def serving(config: Path, port: int, tmp_path: Path) -> Iterator[Serving]:
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # Its own session: the cleanup kills the whole group (workers included).
        proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                start_new_session=True)
    try:
        yield Serving(proc, log, f"http://127.0.0.1:{port}")
    finally:
        if proc.poll() is None:
            with_group = proc.pid
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(with_group, signal.SIGKILL)
                proc.wait()


def config_text(tmp_path: Path, port: int, admin: int, workers: int, upstream: str,
                tokens: dict[str, str], routes: dict[str, str], extra: str = "") -> str:
    text = f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = {workers}
shutdown_timeout = 30
{extra}
"""
    for name, command in tokens.items():
        text += f'\n[tokens.{name}]\ncommand = "{command}"\nformat = "Bearer {{token}}"\n'
    for prefix, token in routes.items():
        text += (f'\n[[routes]]\nprefix = "{prefix}"\nupstream = "{upstream}"\ntoken = "{token}"\n'
                 "strip_prefix = true\n")
    return text


BIG = 50_000_000


def start_download(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A request in flight: its response head and the first bytes of its body received."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data) < 100_000:
        chunk = sock.recv(65536)
        assert chunk, data[:200]
        data += chunk
    return sock, data


def finish_download(sock: socket.socket, data: bytes) -> tuple[int, int]:
    """Read the rest: the status and the number of body bytes."""
    while chunk := sock.recv(1 << 20):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), len(body)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_routes_and_tokens_and_keeps_requests_in_flight(
        tmp_path: Path, upstream: Upstream, workers: int) -> None:
    port, admin = free_port(), free_port()
    counter = tmp_path / "runs-a"
    config = tmp_path / "awstoken.toml"
    # A changed command runs at once, however long refresh_min_gap (which rate-limits
    # refreshes asked for by refusals) is.
    gap = 'refresh_min_gap = "10m"'
    config.write_text(config_text(
        tmp_path, port, admin, workers, upstream.url,
        tokens={"a": f"echo a >> {counter}; echo tok-a", "b": "echo tok-b"},
        routes={"/a": "a", "/b": "b"}, extra=gap))
    with serving(config, port, tmp_path) as server:
        wait_for_port(port)
        wait_until(lambda: server.token_seen("/a/echo") == "Bearer tok-a", 30, "Bearer tok-a on /a/echo")
        wait_until(lambda: server.token_seen("/b/echo") == "Bearer tok-b", 30, "Bearer tok-b on /b/echo")
        # In flight on a route the reload removes: it finishes as it started.
        in_flight, received = start_download(port, f"/b/stream/{BIG}")
        # a: command changed; b: removed (token and route); c: added (token and route).
        config.write_text(config_text(
            tmp_path, port, admin, workers, upstream.url,
            tokens={"a": f"echo a >> {counter}; echo tok-a2", "c": "echo tok-c"},
            routes={"/a": "a", "/c": "c"}, extra=gap))
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log("configuration reloaded")
        assert "routes: +/c -/b" in server.log
        assert "tokens: +c -b ~a" in server.log
        # The request in flight during the reload finishes.
        assert finish_download(in_flight, received) == (200, BIG)
        # The cached token of a is served at once (never a 503), then the changed command's.
        assert server.token_seen("/a/echo") in ("Bearer tok-a", "Bearer tok-a2")
        wait_until(lambda: server.token_seen("/a/echo") == "Bearer tok-a2", 30, "Bearer tok-a2 on /a/echo")
        wait_until(lambda: server.token_seen("/c/echo") == "Bearer tok-c", 30, "Bearer tok-c on /c/echo")
        assert call(server.base, "GET", "/b/echo").status == 404
        assert counter.read_text().count("a") == 2  # one run at start, one for the change
        # An invalid file: one clear line, the running configuration stays.
        config.write_text(config.read_text() + '\n[[routes]]\nprefix = "/d"\nupstream = '
                          f'"{upstream.url}"\ntoken = "missing"\n')
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log("reload failed")
        failed = [line for line in server.log.splitlines() if "reload failed" in line]
        assert len(failed) == 1
        assert "still running the previous configuration" in failed[0]
        assert "missing" in failed[0]
        assert server.token_seen("/c/echo") == "Bearer tok-c"
        assert server.proc.poll() is None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    assert "tok-a" not in server.log
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_port_fails_the_start_before_any_source_runs(
        tmp_path: Path, upstream: Upstream, workers: int) -> None:
    counter = tmp_path / "runs"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "awstoken.toml"
        config.write_text(config_text(
            tmp_path, port, free_port(), workers, upstream.url,
            tokens={"a": f"echo run >> {counter}; echo tok-a"}, routes={"/": "a"}))
        with serving(config, port, tmp_path) as server:
            code = server.proc.wait(90)
    log = server.log
    assert code != 0, log
    assert f"cannot listen on 127.0.0.1:{port}" in log
    assert "SIGTERM received" not in log
    assert "keep failing" not in log
    assert not counter.exists(), "a source ran for a server that could not start"


def test_a_killed_worker_is_replaced(tmp_path: Path, upstream: Upstream) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(config_text(tmp_path, port, admin, 2, upstream.url,
                                  tokens={"a": "echo tok-a"}, routes={"/a": "a"}))
    with serving(config, port, tmp_path) as server:
        server.wait_log("proxy listening", count=2)
        workers = children(server.proc.pid, WORKER)
        assert len(workers) == 2
        os.kill(int(workers[0]), signal.SIGKILL)
        server.wait_log(f"(pid {workers[0]}) exited with status -9; restarting it")
        server.wait_log("proxy listening", count=3)
        wait_until(lambda: server.token_seen("/a/echo") == "Bearer tok-a", 30, "Bearer tok-a on /a/echo")
        assert len(children(server.proc.pid, WORKER)) == 2
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    assert "keep failing" not in server.log
