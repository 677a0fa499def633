"""Proxy benchmark: awstoken serve vs nginx with a fixed proxy_set_header, one run.

    .venv/bin/python bench/bench_proxy.py [--seconds 5] [--stream-mib 1024]

Against one local origin (nginx, 1 worker): the origin directly, nginx as a proxy with a
fixed ``proxy_set_header Authorization`` (256k proxy buffers), and ``awstoken.proxy.serve``
(1 worker, uvloop, access log off). Small responses: wrk -t1 -c32, req/s, p50/p99, CPU per
request of the proxy process. Streaming: one GET of a sparse file through each proxy with
curl, MB/s and the proxy's peak RSS (VmHWM). The proxy is pinned to CPU 1, wrk, curl and
the origin to CPU 0 (a 2-core machine). Bounded in time; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port, hwm_kib, measure, nginx, pin, process, rss_kib

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
    args = parser.parse_args()
    with nginx() as ng:
        big = ng.dir / "files" / "big"
        with open(big, "wb") as fh:
            fh.truncate(args.stream_mib * 1024 * 1024)
        big.chmod(0o644)
        big.parent.chmod(0o755)
        origin = f"http://127.0.0.1:{ng.origin_port}"
        port = free_port()
        argv = [sys.executable, str(HERE / "proxy_main.py"), origin, str(port), str(args.workers)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        cpu = None if args.workers > 1 else 1
        with process(argv, port, cpu=cpu, env=env) as proc:
            rows = [
                measure("origin (nginx, direct)", f"{origin}/small", None, seconds=args.seconds),
                measure("nginx proxy_pass + proxy_set_header", f"http://127.0.0.1:{ng.proxy_port}/small",
                        ng.proc.pid, seconds=args.seconds),
                measure(f"awstoken serve ({args.workers} worker)", f"http://127.0.0.1:{port}/small",
                        proc.pid, seconds=args.seconds),
            ]
            base = rows[1].wrk.rps
            print("Small responses (2 bytes), wrk -t1 -c32")
            print("| target | req/s | x nginx | p50 ms | p99 ms | proxy CPU us/req | errors |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r.name} | {r.wrk.rps:.0f} | {r.wrk.rps / base:.2f} | {r.wrk.p50_ms:.2f} | "
                      f"{r.wrk.p99_ms:.2f} | {r.cpu_us_per_req:.0f} | {r.wrk.errors} |")
            path = "/files/big"
            direct, _ = stream(f"{origin}{path}", None)
            ng_speed, ng_rss = stream(f"http://127.0.0.1:{ng.proxy_port}{path}", ng.proc.pid)
            aw_speed, aw_rss = stream(f"http://127.0.0.1:{port}{path}", proc.pid)
            print(f"\nStreaming {args.stream_mib} MiB, one curl GET")
            print("| target | MB/s | x nginx | peak RSS MiB |")
            print("|---|---|---|---|")
            print(f"| origin (nginx, direct) | {direct:.0f} | - | - |")
            print(f"| nginx proxy (256k buffers) | {ng_speed:.0f} | 1.00 | {ng_rss / 1024:.1f} |")
            print(f"| awstoken serve | {aw_speed:.0f} | {aw_speed / ng_speed:.2f} | {aw_rss / 1024:.1f} |")


if __name__ == "__main__":
    main()
