"""Shared benchmark harness: nginx origin and proxy, wrk runs, CPU and RSS of a process tree.

Every run is bounded in time and only talks to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TOKEN_HEADER = "Basic QVdTOmJlbmNoLXRva2Vu"  # a fixed stand-in token value
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for c in child.read_text().split():
                pids.extend(tree_pids(int(c)))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in set(tree_pids(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_kib(pid: int) -> int:
    """Current RSS (sum over the tree) in KiB."""
    total = 0
    for p in set(tree_pids(pid)):
        with contextlib.suppress(OSError):
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
    return total


def hwm_kib(pid: int) -> int:
    """Peak RSS (VmHWM, max over the tree) in KiB."""
    peak = 0
    for p in set(tree_pids(pid)):
        with contextlib.suppress(OSError):
            m = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            peak = max(peak, int(m.group(1)) if m else 0)
    return peak


NGINX_HEAD = """
daemon off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx-{role}.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
"""
NGINX_ORIGIN = """
    server {{
        listen 127.0.0.1:{origin_port};
        location = /small {{ return 200 "ok"; }}
        location /files/ {{ alias {dir}/files/; sendfile on; }}
    }}
}}
"""
NGINX_PROXY = """
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{token}";
            proxy_buffers 8 256k; proxy_buffer_size 256k; proxy_busy_buffers_size 512k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    origin_port: int
    proxy_port: int
    dir: Path
    proc: subprocess.Popen[bytes]  # the proxy instance (pinned like the proxy under test)
    origin: subprocess.Popen[bytes]


@contextlib.contextmanager
def nginx(origin_cpu: int | None = 0, proxy_cpu: int | None = 1) -> Iterator[Nginx]:
    """Two nginx instances (1 worker each): the origin (/small, /files/) on ``origin_cpu``,
    and the baseline proxy with a fixed ``proxy_set_header`` on ``proxy_cpu``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="awstoken-bench-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)  # nginx workers run as another user when started by root
        (d / "files").mkdir()
        (d / "files").chmod(0o755)
        origin_port, proxy_port = free_port(), free_port()
        values = {"dir": d, "origin_port": origin_port, "proxy_port": proxy_port,
                  "token": TOKEN_HEADER}
        procs = []
        try:
            for role, body, cpu in (("origin", NGINX_ORIGIN, origin_cpu),
                                    ("proxy", NGINX_PROXY, proxy_cpu)):
                conf = d / f"nginx-{role}.conf"
                conf.write_text((NGINX_HEAD + body).format(role=role, **values))
                procs.append(subprocess.Popen(pin([binary, "-p", str(d), "-c", str(conf), "-e",
                                                   str(d / "error.log")], cpu)))
            wait_port(origin_port)
            wait_port(proxy_port)
            yield Nginx(origin_port, proxy_port, d,
                        procs[1], procs[0])
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def pin(argv: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def wrk(url: str, *, seconds: int = 5, connections: int = 32, cpu: int | None = 0) -> WrkResult:
    lua = Path(tempfile.gettempdir()) / "awstoken-bench-latency.lua"
    lua.write_text(
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('P50 %f\\nP99 %f\\nREQS %d\\nERRS %d\\n', latency:percentile(50),"
        " latency:percentile(99), summary.requests, summary.errors.connect + summary.errors.read"
        " + summary.errors.write + summary.errors.status + summary.errors.timeout))\nend\n")
    out = subprocess.run(pin(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua),
                              url], cpu), capture_output=True, text=True, timeout=seconds + 30,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    vals = dict(re.findall(r"^(P50|P99|REQS|ERRS) ([\d.]+)$", out, re.M))
    return WrkResult(rps, float(vals["P50"]) / 1000, float(vals["P99"]) / 1000, int(float(vals["ERRS"])),
                     int(float(vals["REQS"])))


@dataclass
class Measured:
    name: str
    wrk: WrkResult
    cpu_us_per_req: float
    also_cpu_us_per_req: float = 0.0  # of the processes in ``measure(also=...)``


def measure(name: str, url: str, pid: int | None, *, seconds: int = 5, warmup: int = 1,
            connections: int = 32, also: Sequence[int] = ()) -> Measured:
    """wrk against ``url``; CPU per request of ``pid``'s tree (and, apart, of ``also``)."""
    wrk(url, seconds=warmup, connections=connections)
    before = cpu_seconds(pid) if pid else 0.0
    also_before = sum(cpu_seconds(p) for p in also)
    result = wrk(url, seconds=seconds, connections=connections)
    used = (cpu_seconds(pid) - before) if pid else 0.0
    also_used = sum(cpu_seconds(p) for p in also) - also_before
    requests = max(result.requests, 1)
    return Measured(name, result, 1e6 * used / requests, 1e6 * also_used / requests)


@contextlib.contextmanager
def process(argv: Sequence[str], port: int, *, cpu: int | None = 1,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(pin(argv, cpu), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, 30)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
