"""The Python share of the proxy's common path: CPU per request with no socket and no loop.

    python bench/bench_callbacks.py [--src DIR[,DIR...]] [--requests 50000] [--rounds 5]
    python bench/bench_callbacks.py --instructions [--src DIR[,DIR...]]

One client connection and one pooled upstream connection of ``awstoken serve``'s request
path (``FastForwarder`` over ``ClientConnection`` and ``UpstreamConnection``), each on a
transport that only counts bytes. Each request: the client's request head goes into
``data_received``, the upstream's answer into the upstream protocol's read buffer; the
answer reaches the client transport. What is timed is everything the proxy's Python does
for a request and nothing else: no system call, no event-loop wake-up (``wrk`` against the
real server, in ``bench_proxy.py``, measures those). Two requests: wrk's (Host only) and a
container client's (six fields); the answer is nginx's for a small static file (eight
fields). Each ``--src`` tree runs in its own process, the trees interleaved per round;
the table gives the median per request and each tree's ratio to the first one.

Each figure is the fastest of ``--requests``/100 runs of 100 requests (wall time, which
on a loaded machine includes preemption; the fastest run has the least of it): steady
enough to compare small changes, which wrk's figures on a shared machine are not. Its
absolute figures are not the proxy's CPU per request (the kernel's and the event loop's
shares are missing). ``--instructions`` counts the instructions per request under
valgrind instead: the same figure on every run whatever the machine's load (each tree
takes about a minute), the measure to compare changes of a few per cent with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WRK = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
CLIENT = (b"GET /v2/library/alpine/manifests/3.20 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
          b"User-Agent: containerd/v1.7.24\r\nAccept: application/vnd.oci.image.index.v1+json, "
          b"application/vnd.docker.distribution.manifest.list.v2+json\r\n"
          b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n"
          b"Docker-Distribution-Api-Version: registry/2.0\r\n\r\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 05:00:00 GMT\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\n"
          b"Last-Modified: Tue, 01 Dec 2026 04:00:00 GMT\r\nConnection: keep-alive\r\n"
          b"ETag: \"674ccd40-2\"\r\nAccept-Ranges: bytes\r\n\r\nok")

CHILD = r'''
import asyncio, json, ssl, sys, time
from prometheus_client import CollectorRegistry
from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings
from awstoken.proxy._auth import InboundAuth
from awstoken.proxy._fast import FastForwarder
from awstoken.proxy._h1 import Frontend, Origin, Pool, UpstreamConnection
from awstoken.proxy._metrics import RouteMetrics
from awstoken.proxy._routes import RouteTable

REQUESTS, COUNT = json.loads(sys.argv[1]), int(sys.argv[2])
ANSWER = bytes.fromhex(sys.argv[3])
TIMED = sys.argv[4] == "timed"  # else: run COUNT requests untimed (instruction counts)

class Sink(asyncio.Transport):
    """Takes writes and forgets them (counting bytes); reports what protocols ask."""
    def __init__(self, peer):
        super().__init__()
        self.written = 0
        self.writes = 0
        self.extra = {"peername": peer, "sockname": ("127.0.0.1", 8080)}
    def write(self, data):
        self.written += len(data)
        self.writes += 1
    def pause_reading(self): pass
    def resume_reading(self): pass
    def is_closing(self): return False
    def close(self): raise AssertionError("closed")
    def abort(self): raise AssertionError("aborted")
    def get_extra_info(self, name, default=None): return self.extra.get(name, default)
    def set_write_buffer_limits(self, high=None, low=None): pass
    def get_write_buffer_size(self): return 0

async def main():
    storage = MemoryStorage()
    storage.write("ecr", Token(value="Basic QVdTOmJlbmNoLXRva2Vu"))
    routes = RouteTable([RouteSettings(prefix="/", upstream="http://127.0.0.1:8081", token="ecr")])
    pool = Pool(ssl_context=ssl.create_default_context(), connect_timeout=5, read_timeout=30)
    up = UpstreamConnection(pool, Origin.parse("http://127.0.0.1:8081"))
    up_t = Sink(("127.0.0.1", 8081))
    up.connection_made(up_t)
    pool.all.add(up)
    pool.put(up)
    fw = FastForwarder(routes=routes, keeper=Keeper(storage), pool=pool,
                       auth=InboundAuth(ServerSettings()),
                       metrics=RouteMetrics(CollectorRegistry()), access_log=False)
    frontend = Frontend(fw, fast=fw.fast)
    client = frontend()
    client_t = Sink(("127.0.0.1", 40000))
    client.connection_made(client_t)
    size = len(ANSWER)
    results = {}
    for name, hexed in REQUESTS.items():
        request = bytes.fromhex(hexed)
        def one():
            client.data_received(request)
            up.get_buffer(-1)[:size] = ANSWER
            up.buffer_updated(size)
        for _ in range(2000):
            one()
        if not TIMED:
            for _ in range(COUNT):
                one()
            results[name] = 0.0
            continue
        # The fastest of many short runs: what the code costs, without the time the
        # process was preempted or its caches taken by others on a loaded machine.
        best = float("inf")
        for _ in range(COUNT // 100):
            before = client_t.writes
            start = time.perf_counter_ns()
            for _ in range(100):
                one()
            best = min(best, time.perf_counter_ns() - start)
            assert client_t.writes - before == 100, "answers did not reach the client"
            assert client.task is None, "a request left the callback path"
        results[name] = best / 100 / 1000
    print(json.dumps(results))

try:
    import uvloop  # as serve runs it (loop.time() in C)
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
'''


REQUEST_KINDS = {"wrk (1 field)": WRK.hex(), "container client (6 fields)": CLIENT.hex()}


def child(src: str, count: int, mode: str, kinds: dict[str, str],
          wrapper: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "PYTHONHASHSEED": "0"}
    out = subprocess.run([*(wrapper or []), sys.executable, "-c", CHILD, json.dumps(kinds),
                          str(count), ANSWER.hex(), mode], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{src}: {out.stderr[-2000:]}")
    return out


def timed(src: str, count: int) -> dict[str, float]:
    return dict(json.loads(child(src, count, "timed", REQUEST_KINDS).stdout))


def instructions(src: str, count: int) -> dict[str, float]:
    """Instructions per request, counted by valgrind: the same on every run and machine
    load. Two runs of ``count`` and ``3 * count`` requests; the difference leaves the
    start-up out."""
    grind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    result = {}
    for kind, hexed in REQUEST_KINDS.items():
        refs = []
        for n in (count, 3 * count):
            err = child(src, n, "count", {kind: hexed}, grind).stderr
            match = re.search(r"I\s+refs:\s+([\d,]+)", err)
            if match is None:
                raise SystemExit(f"{src}: no instruction count from valgrind: {err[-500:]}")
            refs.append(int(match.group(1).replace(",", "")))
        result[kind] = (refs[1] - refs[0]) / (2 * count)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", default=str(HERE.parent / "src"))
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions with valgrind instead of timing (one round)")
    args = parser.parse_args()
    trees = args.src.split(",")
    if args.instructions:
        if not shutil.which("valgrind"):
            raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
        counted = {tree: instructions(tree, min(args.requests, 2000)) for tree in trees}
        _table("Instructions per request of the callback path (valgrind, deterministic)",
               trees, {tree: [c] for tree, c in counted.items()}, "{:.0f}")
        return 0
    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            runs[tree].append(timed(tree, args.requests))
    _table(f"Python CPU per request of the callback path (us, median of {args.rounds} rounds "
           f"of the fastest of {args.requests // 100} runs of 100; load average "
           f"{os.getloadavg()[0]:.2f})", trees, runs, "{:.2f}")
    return 0


def _table(title: str, trees: list[str], runs: dict[str, list[dict[str, float]]],
           form: str) -> None:
    kinds = list(runs[trees[0]][0])
    print(title)
    print("| tree | " + " | ".join(kinds) + " | x first tree |")
    print("|---|" + "---|" * (len(kinds) + 1))
    base = [statistics.median(r[k] for r in runs[trees[0]]) for k in kinds]
    for tree in trees:
        medians = [statistics.median(r[k] for r in runs[tree]) for k in kinds]
        ratio = " ".join(f"{m / b:.2f}" for m, b in zip(medians, base, strict=True))
        print(f"| {tree} | " + " | ".join(form.format(m) for m in medians) + f" | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
