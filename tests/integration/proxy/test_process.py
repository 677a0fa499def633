"""The proxy as a process: graceful SIGTERM, and workers sharing the port and the storage."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures import processes
from tests.fixtures.faults import children, process_alive
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.proxy import Upstream
from tests.fixtures.wait import wait_until

from .conftest import Reply, call

ROOT = Path(__file__).resolve().parents[3]


@contextmanager
def serving(upstream: Upstream, tmp_path: Path,
            workers: int) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    port, admin = free_port(), free_port()
    processes.issue("Bearer from-command")  # serve_main's token
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.proxy.serve_main", upstream.url, str(port),
         str(admin), str(tmp_path / "tokens"), str(workers)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        wait_for_port(admin)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base) == 200, 20, "a 200 from /echo")
        yield proc, base, f"http://127.0.0.1:{admin}"
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
        processes.expose("serve_main", (out or "") + (err or ""))


def _status(base: str) -> int | None:
    """The status of GET /echo, or None while the port refuses (seen once under load with
    two workers, after the port had accepted a first connection)."""
    try:
        return call(base, "GET", "/echo").status
    except ConnectionRefusedError:
        return None


def test_sigterm_finishes_in_flight_requests(upstream: Upstream, tmp_path: Path) -> None:
    with serving(upstream, tmp_path, 1) as (proc, base, _):
        replies: list[Reply] = []
        slow = threading.Thread(target=lambda: replies.append(call(base, "GET", "/stream/300000000")))
        slow.start()
        wait_until(lambda: any(s["raw_path"].startswith("/stream/") for s in upstream.seen), 20,
                   "the download in flight")
        proc.send_signal(signal.SIGTERM)
        slow.join(60)
        assert replies and replies[0].status == 200
        assert len(replies[0].body) == 300_000_000
        assert proc.wait(30) == 0
        _, err = proc.communicate()
        processes.expose("serve_main", err)
        assert "SIGTERM received, shutting down" in err
        assert "from-command" not in err


def test_workers_share_port_and_storage(upstream: Upstream, tmp_path: Path) -> None:
    with serving(upstream, tmp_path, 2) as (proc, base, admin):
        for _ in range(40):
            assert call(base, "GET", "/echo").status == 200
        auth = {{k.lower(): v for k, v in s["headers"]}["authorization"] for s in upstream.seen}
        assert auth == {"Bearer from-command"}
        forwarded = {{k.lower(): v for k, v in s["headers"]}.get("x-forwarded-for")
                     for s in upstream.seen}
        assert forwarded == {"127.0.0.1"}
        metrics = call(admin, "GET", "/metrics").body.decode()
        line = next(x for x in metrics.splitlines()
                    if x.startswith('awstoken_proxy_requests_total{route="/",status="2xx"}'))
        assert float(line.split()[-1]) >= 40
        assert call(admin, "GET", "/readyz").status == 200
        workers = children(proc.pid, b"awstoken.proxy._run.worker")
        assert len(workers) == 2
        # Fresh interpreters, not forks of a parent that runs threads (the rotator's).
        for child in workers:
            assert b"awstoken.proxy._run.worker" in Path(f"/proc/{child}/cmdline").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_workers_stop_when_their_parent_is_killed(upstream: Upstream, tmp_path: Path) -> None:
    with serving(upstream, tmp_path, 2) as (proc, base, _):
        assert call(base, "GET", "/echo").status == 200
        workers = children(proc.pid, b"awstoken.proxy._run.worker")
        assert len(workers) == 2
        proc.kill()  # SIGKILL: the parent cannot stop its workers itself
        proc.wait(10)
        wait_until(lambda: not any(process_alive(w) for w in workers), 20,
                   f"the workers {workers} to exit")


def test_sighup_without_a_file_to_reload_is_logged_not_fatal(upstream: Upstream,
                                                             tmp_path: Path) -> None:
    with serving(upstream, tmp_path, 1) as (proc, base, _):
        proc.send_signal(signal.SIGHUP)
        assert call(base, "GET", "/echo").status == 200
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _, err = proc.communicate()
    assert "SIGHUP received: nothing to reload" in err


def test_merged_metrics_of_two_workers_keep_created_timestamps(tmp_path: Path) -> None:
    # Two workers each count 503s for a route whose token never comes; the parent's /metrics
    # sums the counters and keeps the earliest creation time (summing gave ~3.59e9).
    from tests.fixtures.cli import awstoken_cli

    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.never]
command = "false"
retry = "1h"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 2
access_log = false

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9"
token = "never"
""")
    started = time.time()
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        wait_for_port(admin)
        base = f"http://127.0.0.1:{port}"
        # One connection per request: the kernel spreads them over both workers (SO_REUSEPORT);
        # all 40 on one worker has a probability of 2**-39.
        for _ in range(40):
            assert call(base, "GET", "/v2/").status == 503
        metrics = call(f"http://127.0.0.1:{admin}", "GET", "/metrics").body.decode()
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in metrics.splitlines() if line and not line.startswith("#")}
        assert values['awstoken_proxy_token_unavailable_total{route="/"}'] == 40
        created = values['awstoken_proxy_token_unavailable_created{route="/"}']
        assert started - 1 <= created <= time.time()
        assert all(v <= time.time() for k, v in values.items() if "_created" in k)
        # Every listener of serve is the proxy's own HTTP/1.1 server, and the parent reads
        # its workers' metrics without a client library: no process loads aiohttp.
        family = [proc.pid, *children(proc.pid, b"_run.worker")]
        assert len(family) == 3
        for pid in family:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "aiohttp" not in maps and "multidict" not in maps, pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
