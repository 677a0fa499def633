"""Proxy benchmark: awstoken serve vs nginx with a fixed proxy_set_header, one run.

    .venv/bin/python bench/bench_proxy.py [--seconds 5] [--stream-mib 1024] [--rounds 3]
        [--src DIR,DIR...] [--only small|stream]

Against one local origin (nginx, 1 worker): the origin directly, nginx as a proxy with a
fixed ``proxy_set_header Authorization`` (256k proxy buffers), and ``awstoken.proxy.serve``
(1 worker, uvloop, access log off), once per source tree given with ``--src`` (default:
this checkout's ``src``; add another checkout's ``src`` to compare before and after in one
run). Small responses: wrk -t1 -c32, req/s, p50/p99, CPU per request of the proxy process.
Streaming: one GET of a sparse file through each proxy with curl, MB/s and the proxy's peak
RSS (VmHWM). The proxy is pinned to CPU 1, wrk, curl and the origin to CPU 0 (a 2-core
machine). Bounded in time; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Measured, free_port, hwm_kib, measure, nginx, pin, process, rss_kib

HERE = Path(__file__).resolve().parent


def stream(url: str, pid: int | None) -> tuple[float, int]:
    """MB/s of one GET through ``url`` and the peak RSS (KiB) of ``pid`` meanwhile."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set() and pid:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = subprocess.run(pin(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
                              url], 0), capture_output=True, text=True, timeout=600, check=True).stdout
    done.set()
    sampler.join()
    speed, _ = out.split()
    if pid:
        peak = max(peak, hwm_kib(pid))
    return float(speed) / 1e6, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--stream-mib", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--src", default=str(HERE.parent / "src"),
                        help="comma-separated source trees (each a checkout's src/) to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("small", "stream"),
                        help="measure only small responses or only streaming")
    args = parser.parse_args()
    trees = [Path(s.strip()).resolve() for s in args.src.split(",") if s.strip()]
    with nginx() as ng:
        big = ng.dir / "files" / "big"
        with open(big, "wb") as fh:
            fh.truncate(args.stream_mib * 1024 * 1024)
        big.chmod(0o644)
        big.parent.chmod(0o755)
        origin = f"http://127.0.0.1:{ng.origin_port}"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        cpu = None if args.workers > 1 else 1
        path = "/files/big"
        stream(f"{origin}{path}", None)  # the sparse file's pages into the cache first
        with contextlib.ExitStack() as stack:
            targets = [("nginx proxy_pass + proxy_set_header", ng.proxy_port, ng.proc.pid)]
            for tree in trees:
                port = free_port()
                argv = [sys.executable, str(HERE / "proxy_main.py"), origin, str(port),
                        str(args.workers)]
                proc = stack.enter_context(process(argv, port, cpu=cpu,
                                                   env={**env, "PYTHONPATH": str(tree)}))
                label = "" if len(trees) == 1 else f", {tree.parent.name}"
                targets.append((f"awstoken serve ({args.workers} worker{label})", port,
                                proc.pid))
            # Rounds interleave the targets, so a burst of load on this shared machine hits
            # them alike; each ratio is taken within its round, and the median reported.
            small: dict[str, list[Measured]] = {name: [] for name, _, _ in targets}
            streams: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in targets}
            direct = [measure("origin (nginx, direct)", f"{origin}/small", None,
                              seconds=args.seconds)] if args.only != "stream" else []
            for _ in range(args.rounds):
                for name, port, pid in targets if args.only != "stream" else ():
                    small[name].append(measure(name, f"http://127.0.0.1:{port}/small", pid,
                                               seconds=args.seconds))
                for name, port, pid in targets if args.only != "small" else ():
                    streams[name].append(stream(f"http://127.0.0.1:{port}{path}", pid))
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        base_name = targets[0][0]
        if direct:
            print_small(args, targets, small, direct, base_name)
        if args.only != "small":
            print_stream(args, targets, streams, base_name)


def print_small(args: argparse.Namespace, targets: list[tuple[str, int, int]],
            small: dict[str, list[Measured]], direct: list[Measured], base_name: str) -> None:
    print(f"Small responses (2 bytes), wrk -t1 -c32, {args.seconds} s, median of "
          f"{args.rounds} interleaved rounds")
    print("| target | req/s | x nginx (per round) | x nginx (median) | p50 ms | p99 ms "
          "| proxy CPU us/req | x nginx by CPU (per round) | x nginx by CPU (median) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    d = direct[0]
    print(f"| origin (nginx, direct) | {d.wrk.rps:.0f} | - | - | {d.wrk.p50_ms:.2f} | "
          f"{d.wrk.p99_ms:.2f} | - | - | - | {d.wrk.errors} |")
    for name, _, _ in targets:
        runs = small[name]
        ratios = [r.wrk.rps / b.wrk.rps for r, b in zip(runs, small[base_name], strict=True)]
        # By CPU: nginx's CPU per request over this target's, in the same round.
        by_cpu = [b.cpu_us_per_req / max(r.cpu_us_per_req, 1e-9)
                  for r, b in zip(runs, small[base_name], strict=True)]
        mid = median_run(runs)
        print(f"| {name} | {mid.wrk.rps:.0f} | {' '.join(f'{x:.2f}' for x in ratios)} | "
              f"{statistics.median(ratios):.2f} | {mid.wrk.p50_ms:.2f} | {mid.wrk.p99_ms:.2f} "
              f"| {statistics.median(r.cpu_us_per_req for r in runs):.1f} | "
              f"{' '.join(f'{x:.2f}' for x in by_cpu)} | {statistics.median(by_cpu):.2f} | "
              f"{sum(r.wrk.errors for r in runs)} |")


def print_stream(args: argparse.Namespace, targets: list[tuple[str, int, int]],
             streams: dict[str, list[tuple[float, int]]], base_name: str) -> None:
    print(f"\nStreaming {args.stream_mib} MiB, one curl GET per round, {args.rounds} rounds")
    print("| target | MB/s (median) | x nginx (per round) | x nginx (median) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, _, _ in targets:
        runs = streams[name]
        ratios = [r[0] / b[0] for r, b in zip(runs, streams[base_name], strict=True)]
        print(f"| {name} | {statistics.median(r[0] for r in runs):.0f} | "
              f"{' '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} | "
              f"{max(r[1] for r in runs) / 1024:.1f} |")


def median_run(runs: list[Measured]) -> Measured:
    return sorted(runs, key=lambda r: r.wrk.rps)[len(runs) // 2]

if __name__ == "__main__":
    main()
