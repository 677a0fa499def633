"""Benchmarks of RedisStorage against a real redis-server started here (unix socket).

1. The read path: ``token()`` with a RedisStorage against a plain dict lookup in the same run
   (target: within 10x, i.e. no network on the hot path), with a redis-py GET for scale.
2. Propagation: how long a new token takes to reach another storage (pub/sub).
3. Source calls per rotation across N processes sharing one Redis (target: exactly 1):
   library processes (a Keeper each), then ``awstoken serve -c FILE`` processes (each its
   own config, listen and admin ports, as on separate hosts).

    .venv/bin/python bench/bench_redis.py [--processes 1,2,4,8] [--serve 1,3,6] [--seconds 6]

4. Fleet cost (``--cost 12,24,48``): N library processes (default RedisStorage settings: lease
   15 s, poll 5 s) each following 3 tokens. Idle (interval 1 h, after the first fetch) and
   rotating (interval 1 s): Redis commands per second per process, from ``INFO stats``
   ``total_commands_processed`` over the window, and propagation: for every record a process
   did not write itself, the time from the writer's ``refreshed_at`` to the moment it entered
   the process's cache (p50/p99 over all processes and rotations).

    .venv/bin/python bench/bench_redis.py --cost 12,24,48 --cost-only [--cost-seconds 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.error
import urllib.request
from pathlib import Path

from _harness import free_port

import awstoken
from awstoken import Keeper, RedisStorage, Token


def start_redis(tmp: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    sock = tmp / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not sock.exists():
        time.sleep(0.01)
    return proc


def per_call_ns(stmt: str, namespace: dict[str, object], number: int) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    best = min(timer.repeat(repeat=7, number=number))
    return best / number * 1e9


def bench_reads(url: str) -> None:
    storage = RedisStorage(url)
    value = "Basic " + "QVdT" * 500  # about the size of an ECR header
    storage.write("ecr", Token(value=value, expires_at=time.time() + 3600,
                               refreshed_at=time.time(), generation=1))
    awstoken.set_storage(storage)
    assert awstoken.token("ecr") == value
    plain = {"ecr": value}
    ns = {"plain": plain, "storage": storage, "token": awstoken.token, "values": storage.values,
          "client": storage._client}
    base = per_call_ns("plain.get('ecr')", ns, 1_000_000)
    rows = [
        ("dict lookup (baseline)", base),
        ("RedisStorage.values.get(name)", per_call_ns("values.get('ecr')", ns, 1_000_000)),
        ("RedisStorage.get(name)", per_call_ns("storage.get('ecr')", ns, 1_000_000)),
        ("awstoken.token(name) over RedisStorage", per_call_ns("token('ecr')", ns, 1_000_000)),
        ("redis-py GET (network, for scale)",
         per_call_ns("client.get('awstoken:token:ecr')", ns, 2_000)),
    ]
    print("| read | ns per call | x dict lookup |")
    print("|---|---:|---:|")
    for label, cost in rows:
        print(f"| {label} | {cost:,.0f} | {cost / base:.1f} |")
    storage.close()


def bench_propagation(url: str, rounds: int = 300) -> None:
    writer = RedisStorage(url)
    reader = RedisStorage(url, poll=3600)  # only the events channel can bring new tokens
    writer.write("p", Token(value="v0", refreshed_at=time.time(), generation=0))
    assert reader.get("p") == "v0"
    latencies = []
    for i in range(1, rounds + 1):
        value = f"v{i}"
        started = time.perf_counter()
        writer.write("p", Token(value=value, refreshed_at=time.time(), generation=i))
        while reader.values.get("p") != value:
            time.sleep(0.00005)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    print(f"\npropagation writer -> reader over pub/sub, {rounds} rounds: "
          f"p50 {statistics.median(latencies) * 1e3:.2f} ms, "
          f"p99 {latencies[int(rounds * 0.99) - 1] * 1e3:.2f} ms, "
          f"max {latencies[-1] * 1e3:.2f} ms (safety-net MGET every poll = 5 s)")
    writer.close()
    reader.close()


def fleet_member(url: str, command: str, interval: float, seconds: float) -> None:
    storage = RedisStorage(url, lease=2.0)
    keeper = Keeper(storage, interval=interval)
    rotator = keeper.rotate("fleet", command)
    time.sleep(seconds)
    rotator.stop()
    storage.close()


def bench_fleet(url: str, tmp: Path, sizes: list[int], seconds: float) -> None:
    print("\n| processes | rotations | source calls | calls per rotation |")
    print("|---:|---:|---:|---:|")
    ctx = multiprocessing.get_context("spawn")
    for n in sizes:
        counter = tmp / f"calls-{n}"
        counter.touch()
        prefix_url = url
        command = f"echo x >> {counter}; echo tok-$(date +%s%N)"
        import redis

        client = redis.Redis.from_url(url)
        client.flushall()
        procs = [ctx.Process(target=fleet_member, args=(prefix_url, command, 0.5, seconds))
                 for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        raw = client.get("awstoken:token:fleet")
        rotations = Token.from_json(raw, where="bench").generation if raw else 0
        calls = len(counter.read_text().splitlines())
        print(f"| {n} | {rotations} | {calls} | {calls / max(rotations, 1):.2f} |")
        client.close()


SERVE_CONFIG = """
[storage]
type = "redis"
url = "{url}"
lease = 2

[tokens.fleet]
command = {command}
interval = 0.5
retry = 0.5

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
access_log = false

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9"
token = "fleet"
"""


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def bench_serve_fleet(url: str, tmp: Path, sizes: list[int], seconds: float) -> None:
    """The same count with ``awstoken serve`` processes: rotation lives in the server."""
    script = Path(sys.executable).parent / "awstoken"
    print("\n| serve processes | rotations | source calls | calls per rotation |")
    print("|---:|---:|---:|---:|")
    import redis

    for n in sizes:
        counter = tmp / f"serve-calls-{n}"
        counter.touch()
        command = json.dumps(f"echo x >> {counter}; echo tok-$(date +%s%N)")
        client = redis.Redis.from_url(url)
        client.flushall()
        procs, admins = [], []
        for i in range(n):
            admin = free_port()
            config = tmp / f"serve-{n}-{i}.toml"
            config.write_text(SERVE_CONFIG.format(url=url, command=command, port=free_port(),
                                                  admin=admin))
            procs.append(subprocess.Popen([str(script), "serve", "-c", str(config)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            admins.append(admin)
        deadline = time.monotonic() + 30
        while not all(ready(a) for a in admins) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(seconds)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        raw = client.get("awstoken:token:fleet")
        rotations = Token.from_json(raw, where="bench").generation if raw else 0
        calls = len(counter.read_text().splitlines())
        print(f"| {n} | {rotations} | {calls} | {calls / max(rotations, 1):.2f} |")
        client.close()


COST_TOKENS = ("a", "b", "c")


def cost_member(url: str, interval: float, ready: Path, out: Path, window: Path) -> None:
    """One process of the fleet-cost benchmark (run with ``--member``): follows (or leads)
    the tokens until ``window`` exists, then writes the propagation delays it saw there."""
    from awstoken._rotation.rotator import process_id

    me = process_id()
    seen: list[tuple[float, float]] = []  # (when, delay)

    class Timed(RedisStorage):
        def _remember(self, name: str, record: Token | None) -> None:
            before = self._records.get(name)
            super()._remember(name, record)
            if record is not None and record.leader != me and (
                    before is None or before.generation != record.generation):
                now = time.time()
                seen.append((now, now - record.refreshed_at))

    storage = Timed(url)
    keeper = Keeper(storage, interval=interval, retry=0.5)
    for name in COST_TOKENS:
        keeper.rotate(name, "echo tok-$(date +%s%N)")
        keeper.token(name)  # a reader of the token, as a proxy is
    ready.write_text("1")
    while not window.exists():
        time.sleep(0.1)
    time.sleep(0.2)
    begin, end = (float(x) for x in window.read_text().split(","))
    out.write_text(json.dumps([d for t, d in seen if begin <= t <= end]))
    os._exit(0)  # no orderly release: the measurement is over


def redis_commands(client: object) -> int:
    return int(client.info("stats")["total_commands_processed"])  # type: ignore[attr-defined]


def bench_cost(url: str, tmp: Path, sizes: list[int], seconds: float) -> None:
    import redis

    print("\n| processes | phase | Redis commands/s per process | propagation p50 ms "
          "| p99 ms | records seen |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in sizes:
        for phase, interval in (("idle", 3600.0), ("rotating", 1.0)):
            client = redis.Redis.from_url(url)
            client.flushall()
            window = tmp / f"window-{n}-{phase}"
            procs = []
            for i in range(n):
                ready, out = tmp / f"ready-{n}-{phase}-{i}", tmp / f"out-{n}-{phase}-{i}"
                procs.append((subprocess.Popen(
                    [sys.executable, __file__, "--member", url, str(interval), str(ready),
                     str(out), str(window)], stdin=subprocess.DEVNULL), ready, out))
            deadline = time.monotonic() + 120
            while not all(r.exists() for _, r, _ in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3.0)  # first fetches and subscriptions settle
            begin = time.time()
            before = redis_commands(client)
            time.sleep(seconds)
            after = redis_commands(client) - 1  # our own INFO
            end = time.time()
            window.write_text(f"{begin},{end}")
            latencies: list[float] = []
            for proc, _, out in procs:
                proc.wait(timeout=60)
                if out.exists():
                    latencies += json.loads(out.read_text())
            latencies.sort()
            rate = (after - before) / (end - begin) / n
            p50 = statistics.median(latencies) * 1e3 if latencies else float("nan")
            p99 = (latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1e3
                   if latencies else float("nan"))
            print(f"| {n} | {phase} | {rate:.2f} | {p50:.2f} | {p99:.2f} "
                  f"| {len(latencies)} |", flush=True)
            client.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        url, interval, ready, out, window = sys.argv[2:7]
        cost_member(url, float(interval), Path(ready), Path(out), Path(window))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--serve", default="1,3,6", help="awstoken serve fleet sizes ('' to skip)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--cost", default="", help="fleet-cost sizes, e.g. 12,24,48")
    parser.add_argument("--cost-seconds", type=float, default=8.0)
    parser.add_argument("--cost-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        redis_proc = start_redis(tmp)
        url = f"unix://{tmp / 'redis.sock'}"
        try:
            if args.cost:
                bench_cost(url, tmp, [int(x) for x in args.cost.split(",")], args.cost_seconds)
            if args.cost_only:
                return
            bench_reads(url)
            bench_propagation(url)
            bench_fleet(url, tmp, [int(x) for x in args.processes.split(",")], args.seconds)
            if args.serve:
                bench_serve_fleet(url, tmp, [int(x) for x in args.serve.split(",")],
                                  args.seconds)
        finally:
            redis_proc.terminate()
            redis_proc.wait()


if __name__ == "__main__":
    main()
