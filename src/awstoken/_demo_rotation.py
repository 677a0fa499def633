"""Multi-worker rotation demo: ``python -m awstoken.demo --rotation``.

A stand-in for the AWS CLI prints a new ECR-style token (with the CLI's trailing newline)
on each run. Three worker processes call ``awstoken.rotate`` for the same token on the
default FileStorage; the demo shows that one of them runs the command per refresh, that all
of them read the same clean header value, and that a SIGKILLed leader is replaced. No AWS
account, network or Redis is needed.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FAKE_AWS = """#!/bin/sh
# Stands in for: aws ecr get-authorization-token --query ... --output text
n=$(( $(cat "$0.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$0.count"
printf '%s\\n' "$(printf 'AWS:demo-password-%s' "$n" | base64)"
"""


def _worker(command: str, interval: float, ready: Any) -> None:
    import awstoken

    awstoken.set_interval(interval)
    awstoken.set_retry(1)
    awstoken.rotate("ecr", command, lambda token: "Basic " + token)
    ready.set()
    while True:
        time.sleep(1)


def _show(value: str | None) -> str:
    if value is None:
        return "(none yet)"
    decoded = base64.b64decode(value.removeprefix("Basic ")).decode()
    return f"{value!r}  (decodes to {decoded!r})"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="awstoken-demo-") as tmp:
        os.environ["AWSTOKEN_DIR"] = str(Path(tmp) / "store")  # the embedded default storage
        import awstoken

        fake = Path(tmp) / "aws"
        fake.write_text(FAKE_AWS)
        fake.chmod(0o755)
        count = Path(f"{fake}.count")
        interval = 2.0
        print(f"awstoken {awstoken.__version__} demo: 3 worker processes rotate token 'ecr' "
              f"every {interval:g}s\non the default FileStorage ({os.environ['AWSTOKEN_DIR']}), "
              "with a stand-in for the aws CLI.\n")
        ctx = multiprocessing.get_context("spawn")
        workers = []
        for _ in range(3):
            ready = ctx.Event()
            proc = ctx.Process(target=_worker, args=(str(fake), interval, ready), daemon=True)
            proc.start()
            ready.wait(30)
            workers.append(proc)
        print("worker pids:", " ".join(str(p.pid) for p in workers))
        storage = awstoken.FileStorage()
        try:
            for second in range(1, 8):
                time.sleep(1)
                record = storage.read("ecr")
                runs = count.read_text().strip() if count.exists() else "0"
                leader = record.leader if record else None
                print(f"t={second}s  command runs: {runs}  leader: {leader}  "
                      f"token: {_show(awstoken.token('ecr'))}")
            record = storage.read("ecr")
            assert record is not None
            assert record.leader is not None
            victim = int(record.leader.rpartition(":")[2])
            print(f"\nSIGKILL the leader (pid {victim}); another worker takes over:")
            os.kill(victim, signal.SIGKILL)
            for second in range(1, 7):
                time.sleep(1)
                record = storage.read("ecr")
                runs = count.read_text().strip()
                print(f"t=+{second}s  command runs: {runs}  leader: "
                      f"{record.leader if record else None}  token: {_show(awstoken.token('ecr'))}")
            value = awstoken.token("ecr")
            print("\nThe header value has no trailing newline:", value is not None
                  and not value.endswith("\n"))
            print(f"The command ran {count.read_text().strip()} times for 3 workers over about "
                  "13 s: one run per refresh, not one per worker.")
        finally:
            for proc in workers:
                proc.kill()
                proc.join()
            storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
