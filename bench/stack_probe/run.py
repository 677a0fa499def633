"""Compare candidate HTTP stacks as minimal token-attaching forwarders, against nginx, in one run.

    .venv/bin/python bench/stack_probe/run.py [seconds]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _harness import free_port, measure, nginx, process

HERE = Path(__file__).resolve().parent
CANDIDATES = {
    "aiohttp web.Application + aiohttp client": "aiohttp_app.py",
    "aiohttp low-level Server + aiohttp client": "aiohttp_lowlevel.py",
    "granian RSGI + pyreqwest": "granian_pyreqwest.py",
}


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows = []
    with nginx() as ng:
        up = f"http://127.0.0.1:{ng.origin_port}"
        rows.append(measure("origin (nginx direct)", f"{up}/small", None, seconds=seconds))
        base = measure("nginx proxy_pass + proxy_set_header", f"http://127.0.0.1:{ng.proxy_port}/small",
                       ng.proc.pid, seconds=seconds)
        rows.append(base)
        for name, script in CANDIDATES.items():
            port = free_port()
            with process([sys.executable, str(HERE / script), str(port), up], port) as proc:
                rows.append(measure(name, f"http://127.0.0.1:{port}/small", proc.pid, seconds=seconds))
    print("| stack | req/s | x nginx | p50 ms | p99 ms | CPU us/req | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.wrk.rps:.0f} | {r.wrk.rps / base.wrk.rps:.2f} | {r.wrk.p50_ms:.2f} "
              f"| {r.wrk.p99_ms:.2f} | {r.cpu_us_per_req:.0f} | {r.wrk.errors} |")


if __name__ == "__main__":
    main()
