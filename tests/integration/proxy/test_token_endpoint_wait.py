"""The token endpoint waits for a token that is on its way, like the proxy path.

``awstoken serve`` listens before its first fetch ends: nginx in front of a just-started serve
asked the endpoint at once and got 503. A request that finds no usable token now waits for
the refresh (at most ``server.refresh_wait``, one wait per token shared by every request),
unless a refresh failed within ``server.refresh_min_gap``: then 503 with its reason at once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from awstoken import Command, Keeper, MemoryStorage, Token
from awstoken._config.settings import ServerSettings, Settings, TokenSettings
from tests.fixtures import processes
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.nginx import Reply, request, running_server
from tests.fixtures.ports import free_port, unix_accepts
from tests.fixtures.wait import wait_until

from .conftest import call

RAW = "first-fetch-token-6b1d"
VALUE = f"Basic {RAW}"
ERROR = "token 'ecr': the command exited with status 3: service is down"


def _gated_command(tmp_path: Path) -> tuple[str, Path, Path]:
    """A source that appends a line to ``runs`` each time it runs, then waits for ``gate``."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    line = (f"echo run >> {runs}; i=0; while [ ! -e {gate} ] && [ $i -lt 1200 ]; "
            f"do sleep 0.05; i=$((i+1)); done; echo {RAW}")
    return line, runs, gate


def _runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_request_right_after_serve_starts_waits_for_the_first_token(tmp_path: Path,
                                                                     short_dir: Path) -> None:
    """`awstoken serve` with a source that takes about 2 s, the default refresh_wait (5 s):
    the first request, sent as soon as the socket accepts, gets the token (it got 503)."""
    sock = short_dir / "token.sock"
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "sleep 2; echo {RAW}"
format = "Basic {{token}}"

[server]
admin_listen = "off"
token_listen = "unix:{sock}"
""")
    processes.issue(VALUE, RAW)
    proc = processes.start_logged([*awstoken_cli(), "serve", "-c", str(config)],
                                  tmp_path / "serve.log")
    try:
        wait_until(lambda: unix_accepts(sock) or proc.poll() is not None, 30, "the socket")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        first = request(str(sock), "GET", "/token/ecr")
        assert (first.status, first.header("X-Awstoken-Value")) == (204, VALUE), first.body
    finally:
        processes.stop(proc, 30)
    log = (tmp_path / "serve.log").read_text()
    assert RAW not in log


def _endpoint_settings(sock: Path, *, refresh_wait: float = 60.0,
                       admin: bool = False) -> Settings:
    return Settings(tokens={"ecr": TokenSettings(name="ecr")},
                    server=ServerSettings(admin_listen=("127.0.0.1", free_port()) if admin else None,
                                          token_listen=(str(sock), ("127.0.0.1", 0)),
                                          refresh_wait=refresh_wait))


def _in_threads(count: int, ask: Callable[[], Reply]) -> tuple[list[threading.Thread],
                                                              list[Reply | OSError]]:
    replies: list[Reply | OSError] = []
    lock = threading.Lock()

    def one() -> None:
        reply: Reply | OSError
        try:
            reply = ask()
        except OSError as exc:  # kept: the test's assertion shows it
            reply = exc
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, replies


def _leave_during_the_wait(address: tuple[str, int]) -> None:
    """A client that sends its request and goes away (a reset) before the answer."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET /token/ecr HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n\r\n"
                     .encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _task_count() -> int:
    return len([task for task in asyncio.all_tasks() if task is not asyncio.current_task()])


def test_concurrent_requests_share_one_wait_and_one_source_run(tmp_path: Path,
                                                               short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    line, runs, gate = _gated_command(tmp_path)
    keeper = Keeper(MemoryStorage())
    settings = _endpoint_settings(sock, admin=True)
    processes.issue(VALUE)
    try:
        with running_server(settings, keeper) as running:
            tcp = next(a for a in running.token_addresses if not isinstance(a, str))
            before = running.loop.run(_task_count())
            keeper.rotate("ecr", Command(line), "Basic {token}")
            wait_until(lambda: _runs(runs) == 1, 30, "the first fetch to start")
            held, replies = _in_threads(16, lambda: request(str(sock), "GET", "/token/ecr"))
            tcp_held, tcp_replies = _in_threads(4, lambda: request(tcp, "GET", "/token/ecr"))
            for _ in range(3):
                _leave_during_the_wait(tcp)
            endpoint = running.server.token_listeners.handler
            wait_until(lambda: endpoint.refresher.waiting("ecr"), 30, "the shared wait")
            # The wait holds no thread and no loop: other answers go on meanwhile.
            admin_host, admin_port = running.server.admin_address
            assert call(f"http://{admin_host}:{admin_port}", "GET", "/healthz").status == 200
            assert request(str(sock), "GET", "/token/nope").status == 404
            assert request(tcp, "GET", "/token/ecr", {"Host": "evil.example"}).status == 421
            assert all(t.is_alive() for t in (*held, *tcp_held)), \
                "a request was answered before the token came"
            assert replies == [] and tcp_replies == []
            gate.touch()
            for thread in (*held, *tcp_held):
                thread.join(60)
            answers = [r if isinstance(r, OSError) else (r.status, r.header("X-Awstoken-Value"))
                       for r in replies + tcp_replies]
            assert answers == [(204, VALUE)] * 20
            wait_until(lambda: not endpoint.refresher.waiting("ecr"), 30, "the wait to end")
            # Nothing left behind by the wait or by the clients that left.
            wait_until(lambda: running.loop.run(_task_count()) <= before, 30,
                       "the tasks to end")
            # One source run for every waiting request (the refresh they asked for is the
            # one running; none more once it stored the token).
            assert _runs(runs) == 1
            assert running.endpoint_count("ecr", "204") >= 20
            assert running.endpoint_count("ecr", "503") == 0
    finally:
        gate.touch()
        keeper.stop()


def test_a_refresh_that_just_failed_is_answered_at_once(short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    storage = MemoryStorage()
    storage.write("ecr", Token(value=None, error=ERROR, error_at=time.time(), failures=1))
    # refresh_wait far beyond the client's timeout: a held request would time it out.
    with running_server(_endpoint_settings(sock, refresh_wait=300), Keeper(storage)) as running:
        reply = request(str(sock), "GET", "/token/ecr", timeout=20)
        assert (reply.status, reply.header("X-Awstoken-Value")) == (503, None)
        assert reply.header("Cache-Control") == "no-store"
        assert reply.body.decode() == ("token 'ecr' is not available yet (refresh failed 1 "
                                       "time(s) in a row; last error: the command exited with "
                                       "status 3: service is down)\n")
        assert running.endpoint_count("ecr", "503") == 1


def test_an_expired_token_waits_then_answers_503_without_its_value(short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    storage = MemoryStorage()
    old = "Basic ZXhwaXJlZC12YWx1ZQ"
    processes.issue(old)
    # Expired, and its last failure is older than the gap: a refresh is asked for, and
    # nothing brings a token within refresh_wait.
    storage.write("ecr", Token(value=old, expires_at=2.0, refreshed_at=1.0, generation=1,
                               error=ERROR, error_at=3.0, failures=4))
    settings = _endpoint_settings(sock, refresh_wait=0.3)
    with running_server(settings, Keeper(storage)) as running:
        reply = request(str(sock), "GET", "/token/ecr", timeout=20)
        assert (reply.status, reply.header("X-Awstoken-Value")) == (503, None)
        assert reply.body.startswith(b"token 'ecr' has expired and could not be refreshed yet")
        assert b"service is down" in reply.body
        assert old.encode() not in reply.body
        record = storage.read("ecr")
        assert record is not None and record.value == old  # the record is left as it was
        assert running.endpoint_count("ecr", "503") == 1


def test_refresh_wait_zero_answers_at_once(short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    with running_server(_endpoint_settings(sock, refresh_wait=0.0), Keeper(MemoryStorage())):
        reply = request(str(sock), "GET", "/token/ecr", timeout=20)
        assert reply.status == 503
        assert reply.body == b"token 'ecr' is not available yet\n"


def test_stopping_while_requests_wait_leaves_nothing_behind(short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    settings = _endpoint_settings(sock, refresh_wait=300)  # no source: nothing ends the wait
    with running_server(settings, Keeper(MemoryStorage())) as running:
        held, replies = _in_threads(3, lambda: request(str(sock), "GET", "/token/ecr", timeout=60))
        endpoint = running.server.token_listeners.handler
        wait_until(lambda: endpoint.refresher.waiting("ecr"), 30, "the shared wait")
        # Bounded by LoopThread.run's 30 s, far below refresh_wait.
        running.loop.run(running.server.stop())
        for thread in held:
            thread.join(60)
        # The clients were cut off: none got a token, none hangs; no task is left.
        assert not any(thread.is_alive() for thread in held)
        assert all(isinstance(r, OSError) or r.status == 503 for r in replies), replies
        assert not endpoint.refresher.waiting("ecr")
        wait_until(lambda: running.loop.run(_task_count()) == 0, 30, "the tasks to end")


def test_a_reload_changes_the_wait_of_the_endpoint_and_the_proxy_alike(short_dir: Path) -> None:
    sock = short_dir / "token.sock"
    settings = _endpoint_settings(sock, refresh_wait=300)
    with running_server(settings, Keeper(MemoryStorage())) as running:
        server = running.server
        assert server.token_listeners.handler.refresher is server.refresher  # one wait per token
        server.reload(replace(settings, server=replace(settings.server, refresh_wait=0.0)))
        # With 300 s still in force the request would outlast the client's timeout.
        reply = request(str(sock), "GET", "/token/ecr", timeout=20)
        assert reply.status == 503


def test_connections_accepted_as_the_endpoint_stops_are_closed_not_left_open(
        short_dir: Path) -> None:
    """asyncio's selector loop makes an accepted connection's protocol a loop iteration
    later, in a task: a stop that ran first must still close it, or its client hangs
    until its own timeout (seen: 60 s, and a leaked socket)."""
    from awstoken.proxy._token_endpoint import TokenEndpoint, TokenListeners

    path = str(short_dir / "late.sock")
    settings = ServerSettings(admin_listen=None, token_listen=(path,))

    async def main() -> list[bytes | str]:
        listeners = TokenListeners(TokenEndpoint(Keeper(MemoryStorage()), ["ecr"]), settings)
        await listeners.start()
        clients = []
        for _ in range(4):
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)  # waits in the listener's backlog
            clients.append(client)
        # The accept callback runs, and the connections' tasks are scheduled, not run.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await listeners.stop()
        await asyncio.sleep(0.2)  # anything still pending runs; nothing should answer
        seen: list[bytes | str] = []
        for client in clients:
            client.settimeout(2)
            try:
                seen.append(client.recv(100))  # b"": closed by the server
            except TimeoutError:
                seen.append("still open")
            except OSError as exc:
                seen.append(type(exc).__name__)
            client.close()
        return seen

    seen = asyncio.run(main())
    assert "still open" not in seen, seen
