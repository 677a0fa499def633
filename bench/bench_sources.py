"""One token rotation through the real aws CLI against the native ECR source.

Both run in the same process against the same moto server, which runs in a separate process
(so its CPU is not counted) with ECR's expiresAt patched to a realistic value. A rotation is
``Rotator.refresh()``: run the source, transform, validate and store (MemoryStorage).

CPU per rotation is this process's CPU plus that of the children it waited for (the aws
CLI). Run from the repository root:

    .venv/bin/python bench/bench_sources.py [--cli-runs 5] [--native-runs 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from awstoken import Command, Keeper, MemoryStorage, Source, basic
from awstoken.aws import ECR

# The moto server, in its own process, with ECR expiresAt = now + 12 h.
MOTO = """
import sys, time
from datetime import datetime, timezone
from moto.ecr.responses import ECRResponse
from moto.server import ThreadedMotoServer

original = ECRResponse.get_authorization_token
def patched(self):
    result = original(self)
    for item in result.result["authorizationData"]:
        item["expiresAt"] = datetime.fromtimestamp(time.time() + 43200, timezone.utc)
    return result
ECRResponse.get_authorization_token = patched
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%s" % server.get_host_and_port(), flush=True)
sys.stdin.read()
server.stop()
"""


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(name: str, make_source: Callable[[], Source], runs: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of one rotation."""
    keeper = Keeper(MemoryStorage())
    walls, cpus = [], []
    for _ in range(runs):
        rotator = keeper.rotator(name, make_source(), basic)
        c0, w0 = cpu(), time.perf_counter()
        token = rotator.refresh()
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu() - c0)
        if token.value is None or token.expires_at is None:
            raise SystemExit(f"{name}: the rotation stored no value or no expiry")
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--native-runs", type=int, default=200)
    args = parser.parse_args()
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        sys.exit("the aws CLI is not installed (pip install awscli)")
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        empty.write_text("")
        moto = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert moto.stdout is not None
            endpoint = "http://" + moto.stdout.readline().strip()
            for key in [k for k in os.environ if k.startswith("AWS_")]:
                del os.environ[key]
            os.environ.update({
                "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)})
            run(aws, args.cli_runs, args.native_runs)
        finally:
            assert moto.stdin is not None
            moto.stdin.close()
            moto.wait(30)


def run(aws: str, cli_runs: int, native_runs: int) -> None:
    def cli() -> Source:
        return Command([aws, "ecr", "get-authorization-token", "--output", "json"],
                       token_path="authorizationData[0].authorizationToken",
                       expiry_path="authorizationData[0].expiresAt")

    warm = ECR()
    warm.fetch()  # create the client once, as a long-running rotator does
    results = {
        "aws CLI (Command, JSON output)": measure("cli", cli, cli_runs),
        "native ECR, cold (new client each time)": measure("cold", ECR, max(native_runs // 10, 3)),
        "native ECR, warm client": measure("warm", lambda: warm, native_runs),
    }
    base_wall, base_cpu = results["aws CLI (Command, JSON output)"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; runs: CLI {cli_runs}, "
          f"native warm {native_runs}")
    print()
    print("| rotation | wall (median) | CPU (median) | CLI / this, wall | CLI / this, CPU |")
    print("|---|---|---|---|---|")
    for label, (wall, cpu_s) in results.items():
        print(f"| {label} | {wall * 1000:.1f} ms | {cpu_s * 1000:.1f} ms | "
              f"{base_wall / wall:.0f}x | {base_cpu / max(cpu_s, 1e-6):.0f}x |")


if __name__ == "__main__":
    main()
