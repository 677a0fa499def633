"""Latency an upstream 403 costs through awstoken when the token is not the problem.

    python bench/bench_refusal.py [--seconds 5] [--gap 1]

An upstream (a small asyncio server in its own process) answers every request 403, as a
registry policy that denies a pull does. One client sends requests one after another on a
kept-alive connection for ``--seconds``, first straight to the upstream, then through the
proxy (``awstoken serve`` code in its own process; its rotator's source always gives the
same token, with a minimum refresh gap of ``--gap`` seconds, so the run crosses several
refreshes that bring nothing new). Printed: p50, p99 and max latency of both, and what the
proxy adds. The target is under 50 ms added at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import subprocess
import sys
import time

from _harness import free_port, wait_port


def upstream_main(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 7\r\n\r\ndenied\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def proxy_main(upstream: str, port: int, gap: float) -> int:
    from awstoken import Keeper, MemoryStorage
    from awstoken._config.settings import RouteSettings, ServerSettings, Settings
    from awstoken.proxy import serve

    keeper = Keeper(MemoryStorage())
    keeper.rotate("up", lambda: "Basic QVdTOnNhbWUtdG9rZW4=", min_refresh_gap=gap)
    settings = Settings(
        server=ServerSettings(listen=("127.0.0.1", port), admin_listen=None, access_log=False,
                              refresh_min_gap=gap),
        routes=(RouteSettings(prefix="/", upstream=upstream, token="up"),))
    return serve(settings, keeper)


def latencies(port: int, seconds: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", "/v2/team/app/manifests/latest")
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - started)
        assert response.status == 403, response.status
    conn.close()
    return out


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e3, p99 * 1e3, ordered[-1] * 1e3


def main() -> None:
    if sys.argv[1:2] == ["--upstream"]:
        upstream_main(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--proxy"]:
        sys.exit(proxy_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--gap", type=float, default=1.0)
    args = parser.parse_args()
    up_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])
    proxy = subprocess.Popen([sys.executable, __file__, "--proxy", f"http://127.0.0.1:{up_port}",
                              str(proxy_port), str(args.gap)])
    try:
        wait_port(up_port)
        wait_port(proxy_port)
        direct = latencies(up_port, args.seconds)
        through = latencies(proxy_port, args.seconds)
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(30)
    d, t = summary(direct), summary(through)
    print(f"upstream 403, direct:        n={len(direct):6d}  p50 {d[0]:.2f} ms  p99 {d[1]:.2f} ms  "
          f"max {d[2]:.2f} ms")
    print(f"upstream 403, via awstoken:  n={len(through):6d}  p50 {t[0]:.2f} ms  p99 {t[1]:.2f} ms  "
          f"max {t[2]:.2f} ms")
    print(f"added by awstoken: p50 {t[0] - d[0]:.2f} ms, p99 {t[1] - d[1]:.2f} ms "
          f"(refresh gap {args.gap:g} s, {args.seconds:g} s runs)")


if __name__ == "__main__":
    main()
