"""A worker process for the multi-process tests: rotate one token, report what it reads.

Usage: python rotate_worker.py STORAGE_DIR INTERVAL COMMAND OUTFILE [MIN_REFRESH_GAP]
Writes "<pid> <token>" lines to OUTFILE every 50 ms until killed.
"""

from __future__ import annotations

import os
import sys
import time

import awstoken


def main() -> None:
    directory, interval, command, outfile = sys.argv[1:5]
    gap = float(sys.argv[5]) if len(sys.argv) > 5 else None
    storage = awstoken.FileStorage(directory, poll=0.2)
    if gap is None:  # the module API, as ngx_aws_token's README uses it
        awstoken.set_storage(storage)
        awstoken.set_interval(float(interval))
        awstoken.set_retry(0.5)
        awstoken.rotate("shared", command, "Bearer {token}")
        token = awstoken.token
    else:
        keeper = awstoken.Keeper(storage, interval=float(interval), retry=0.5)
        keeper.rotate("shared", command, "Bearer {token}", min_refresh_gap=gap)
        token = keeper.token
    with open(outfile, "a", buffering=1) as out:
        while True:
            out.write(f"{os.getpid()} {token('shared')}\n")
            time.sleep(0.05)


if __name__ == "__main__":
    main()
