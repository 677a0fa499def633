"""A worker process for the multi-process tests: rotate one token, report what it reads.

Usage: python rotate_worker.py STORAGE_DIR INTERVAL COMMAND OUTFILE
Writes "<pid> <token>" lines to OUTFILE every 50 ms until killed.
"""

from __future__ import annotations

import os
import sys
import time

import awstoken


def main() -> None:
    directory, interval, command, outfile = sys.argv[1:5]
    awstoken.set_storage(awstoken.FileStorage(directory, poll=0.2))
    awstoken.set_interval(float(interval))
    awstoken.set_retry(0.5)
    awstoken.rotate("shared", command, "Bearer {token}")
    with open(outfile, "a", buffering=1) as out:
        while True:
            out.write(f"{os.getpid()} {awstoken.token('shared')}\n")
            time.sleep(0.05)


if __name__ == "__main__":
    main()
