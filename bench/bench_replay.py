"""Memory of the proxy while a large upload is refused (401) and, if kept, replayed.

    python bench/bench_replay.py [--mib 1024]

An upstream on loopback reads each request body whole, then answers 401 unless the token is
the second one. The proxy (``awstoken serve`` code, one process, its own rotator whose
source gives token 1, then 2) is fed ``--mib`` MiB by curl (``-T file``, a file
made sparse so it costs no disk). Cases:

- default bounds (1 MiB in memory, 256 MiB spooled): past the bound the copy is dropped,
  the 401 goes back, the refresh happens;
- ``replay_spool_max_bytes`` above the upload: the body is spooled to a private temporary
  file and replayed once with token 2 (upstream answers 200).

Printed per case: the client's status, the upstream's requests, the proxy's peak RSS
(VmHWM) and its RSS before, and the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _harness import free_port, hwm_kib, rss_kib, wait_port

HERE = Path(__file__).resolve().parent


async def _upstream(port: int, seen: list[tuple[str, int]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            left = int(headers.get("content-length", "0"))
            while left:
                left -= len(await reader.read(min(left, 1 << 20)))
            token = headers.get("authorization", "")
            seen.append((token, int(headers.get("content-length", "0"))))
            status = b"200 OK" if token == "Bearer 2" else b"401 Unauthorized"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def proxy_main(upstream: str, port: int, spool: int) -> int:
    from awstoken import Keeper, MemoryStorage
    from awstoken._config.settings import RouteSettings, ServerSettings, Settings
    from awstoken.proxy import serve

    values = iter(["Bearer 1", "Bearer 2", "Bearer 3"])
    keeper = Keeper(MemoryStorage())
    keeper.rotate("up", lambda: next(values), min_refresh_gap=0.0)
    while keeper.token("up") is None:
        time.sleep(0.01)
    time.sleep(0.05)
    settings = Settings(
        server=ServerSettings(listen=("127.0.0.1", port), admin_listen=None, access_log=False,
                              replay_spool_max_bytes=spool, refresh_min_gap=0.0),
        routes=(RouteSettings(prefix="/", upstream=upstream, token="up"),))
    return serve(settings, keeper)


def run_case(mib: int, spool: int, body: Path) -> None:
    up_port, port = free_port(), free_port()
    seen: list[tuple[str, int]] = []
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_until_complete, args=(_upstream(up_port, seen),),
                     daemon=True).start()
    wait_port(up_port)
    proxy = subprocess.Popen([sys.executable, __file__, "--proxy", f"http://127.0.0.1:{up_port}",
                              str(port), str(spool)])
    try:
        wait_port(port)
        before = rss_kib(proxy.pid)
        started = time.monotonic()
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "-H", "Content-Type: application/octet-stream",
                              "-T", str(body), f"http://127.0.0.1:{port}/upload"],
                             capture_output=True, text=True, timeout=600).stdout
        wall = time.monotonic() - started
        peak = hwm_kib(proxy.pid)
        print(f"{mib} MiB upload, spool bound {spool >> 20} MiB: client got {out}, upstream "
              f"saw {[(t, n >> 20) for t, n in seen]} (token, MiB); proxy RSS {before >> 10} MiB "
              f"before, peak {peak >> 10} MiB; {wall:.1f} s")
    finally:
        proxy.terminate()
        proxy.wait(30)
        loop.call_soon_threadsafe(loop.stop)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--proxy":
        sys.exit(proxy_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile(prefix="awstoken-bench-body-") as body:
        body.truncate(args.mib << 20)  # sparse: reads as zeros, costs no disk
        body.flush()
        run_case(args.mib, 256 << 20, Path(body.name))
        run_case(args.mib, (args.mib + 1) << 20, Path(body.name))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
