"""One member of a fleet for test_redis_fleet.py (run as a script, not collected by pytest).

Rotates one token through Redis with a command, reads it in a tight loop like a proxy would,
and keeps a JSON status file up to date (atomically) until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from awstoken import Command, Fetched, Keeper, RedisStorage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="fleet")
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--lease", type=float, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--ttl", type=float, default=0.0, help="token lifetime (0: no expiry)")
    parser.add_argument("--max-backoff", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    os.environ["FLEET_WORKER"] = str(os.getpid())  # the command logs who ran it
    ttl = args.ttl

    def parse(out: str) -> Fetched:
        return Fetched(out, time.time() + ttl if ttl else None)

    storage = RedisStorage(args.url, lease=args.lease, max_backoff=args.max_backoff,
                           timeout=args.timeout)
    keeper = Keeper(storage, interval=args.interval, retry=0.5)
    rotator = keeper.rotate(args.name, Command(args.command, timeout=30, parse=parse))
    reads = nones = nones_after_first = 0
    seen: list[str] = []

    def dump() -> None:
        status = {"pid": os.getpid(), "reads": reads, "nones": nones,
                  "nones_after_first": nones_after_first, "seen": seen,
                  "leader": rotator.leader, "refreshes": rotator.refreshes,
                  "outages": storage.outages, "connected": storage.connected}
        tmp = args.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(args.status)

    last_dump = 0.0
    while not stopping:
        value = keeper.token(args.name)
        reads += 1
        if value is None:
            nones += 1
            nones_after_first += bool(seen)
        elif not seen or seen[-1] != value:
            seen.append(value)
        if time.monotonic() - last_dump > 0.1:
            dump()
            last_dump = time.monotonic()
        time.sleep(0.005)
    rotator.stop()
    dump()
    storage.close()


if __name__ == "__main__":
    main()
