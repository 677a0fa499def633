"""Cache benchmark: a cached layer served by awstoken serve vs nginx serving it from disk.

    .venv/bin/python bench/bench_cache.py [--mib 1024] [--rounds 3]

One nginx (1 worker, ``sendfile on``) serves a layer file from disk; ``awstoken serve``
(1 worker, uvloop, access log off, a route with ``cache``) proxies that nginx. One GET
through the proxy fills the cache (a miss, verified); then each round downloads the layer
once from nginx directly and once from the proxy's cache (a hit: sendfile from the cache
file) with curl, and reports MB/s, the ratio to nginx within the round, and the proxy's
peak RSS. For the cost of a miss, the same GET also goes once through a second
``awstoken serve`` without cache. nginx and the proxy on CPU 1, curl on CPU 0 (a 2-core machine); both files
are in the page cache after the first reads. Talks to 127.0.0.1 only; bounded in time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port, nginx, process
from bench_proxy import stream

HERE = Path(__file__).resolve().parent


def write_layer(path: Path, mib: int) -> str:
    """``mib`` MiB of incompressible bytes (one random MiB repeated); its sha256 hex."""
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(block)
            digest.update(block)
    path.chmod(0o644)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="awstoken-bench-cache-"))
    try:
        with nginx(origin_cpu=1, proxy_cpu=0) as ng:
            blobs = ng.dir / "files" / "v2" / "bench" / "blobs"
            blobs.mkdir(parents=True)
            for d in (blobs, blobs.parent, blobs.parent.parent):
                d.chmod(0o755)
            name = f"sha256:{write_layer(ng.dir / 'files' / 'layer', args.mib)}"
            os.link(ng.dir / "files" / "layer", blobs / name)
            origin = f"http://127.0.0.1:{ng.origin_port}"
            path = f"/files/v2/bench/blobs/{name}"
            port = free_port()
            argv = [sys.executable, str(HERE / "proxy_main.py"), origin, str(port), "1",
                    str(cache / "store")]
            env = {**os.environ, "PYTHONWARNINGS": "ignore",
                   "PYTHONPATH": str(HERE.parent / "src")}
            plain_port = free_port()
            plain_argv = [sys.executable, str(HERE / "proxy_main.py"), origin, str(plain_port)]
            with process(argv, port, cpu=1, env=env) as proc, \
                    process(plain_argv, plain_port, cpu=1, env=env) as plain:
                stream(f"{origin}{path}", None)  # the origin's file into the page cache
                uncached = stream(f"http://127.0.0.1:{plain_port}{path}", plain.pid)
                fill = stream(f"http://127.0.0.1:{port}{path}", proc.pid)
                objects = cache / "store" / "objects"
                for _ in range(600):
                    if objects.exists() and any(objects.iterdir()):
                        break
                    time.sleep(0.1)
                if not objects.exists() or not any(objects.iterdir()):
                    raise SystemExit("the layer was not cached")
                direct, hits = [], []
                for _ in range(args.rounds):
                    direct.append(stream(f"{origin}{path}", None))
                    hits.append(stream(f"http://127.0.0.1:{port}{path}", proc.pid))
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ratios = [h[0] / d[0] for h, d in zip(hits, direct, strict=True)]
        print(f"\nA {args.mib} MiB layer, one curl GET per round, {args.rounds} rounds")
        print("| target | MB/s (median) | x nginx (per round) | x nginx (median) | "
              "peak RSS MiB |")
        print("|---|---|---|---|---|")
        print(f"| nginx, the file from disk (sendfile on) | "
              f"{statistics.median(d[0] for d in direct):.0f} | - | - | - |")
        print(f"| awstoken serve, cache hit (sendfile) | "
              f"{statistics.median(h[0] for h in hits):.0f} | "
              f"{' '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} | "
              f"{max(h[1] for h in hits) / 1024:.1f} |")
        print(f"| awstoken serve, the miss that filled it (hashed, written; fsync after "
              f"the last byte) | {fill[0]:.0f} | - | - | {fill[1] / 1024:.1f} |")
        print(f"| awstoken serve without cache, the same GET streamed (just before the miss) | "
              f"{uncached[0]:.0f} | - | - | {uncached[1] / 1024:.1f} |")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
