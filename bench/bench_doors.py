"""Each credential door as a whole process, side by side with `aws ecr get-login-password`.

One run, interleaved rounds: in each round every command runs once (in a rotating order),
as the tool that calls it would run it: a new process, stdin in, stdout out. Wall time is
measured around the process; CPU is the child's user + system time (``RUSAGE_CHILDREN``).
The aws CLI talks to moto (its own process, not counted); the doors read a token that a
keeper stored before the run, and never call AWS (their AWS endpoint is a closed port).

Run from the repository root (the package and its extras installed in .venv):

    .venv/bin/python bench/bench_doors.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sources import MOTO

from awstoken._config.build import build_source, build_transform
from awstoken._config.load import load
from awstoken._rotation.keeper import Keeper
from awstoken.storage import FileStorage

BIN = Path(sys.executable).parent
ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
INDEX = "https://acme-111122223333.d.codeartifact.us-east-1.amazonaws.com/pypi/main/simple/"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], stdin: str, env: dict[str, str]) -> tuple[float, float]:
    c0, w0 = children_cpu(), time.perf_counter()
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    wall, cpu = time.perf_counter() - w0, children_cpu() - c0
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    aws = shutil.which("aws", path=str(BIN)) or shutil.which("aws")
    if aws is None:
        sys.exit("the aws CLI is not installed (pip install awscli)")
    with tempfile.TemporaryDirectory() as tmp:
        moto = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert moto.stdout is not None
            endpoint = "http://" + moto.stdout.readline().strip()
            run(Path(tmp), aws, endpoint, args.rounds)
        finally:
            assert moto.stdin is not None
            moto.stdin.close()
            moto.wait(30)


def environments(tmp: Path, endpoint: str, config: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the aws CLI's environment: moto, dummy keys; the doors': AWS at a closed port)."""
    empty = tmp / "empty"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AWSTOKEN_"))}
    common = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(empty),
              "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    cli = {**base, **common, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    doors = {**base, **common, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWSTOKEN_CONFIG": str(config),
             "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / ".config"),
             "XDG_DATA_HOME": str(tmp / ".local")}
    return cli, doors


def run(tmp: Path, aws: str, endpoint: str, rounds: int) -> None:
    config = tmp / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp / "tokens"}"\n\n'
                      '[tokens.ecr]\nsource = "ecr"\nregistry_id = "123456789012"\n'
                      'region = "us-east-1"\nformat = "Basic {token}"\n\n'
                      '[tokens.pypi]\ncommand = "echo bench-codeartifact-token"\nbasic_user = "aws"\n'
                      f'indexes = ["{INDEX}"]\n')
    cli_env, door_env = environments(tmp, endpoint, config)
    # A keeper's work, done once before the run: the ECR token from moto, the other one.
    saved = dict(os.environ)
    os.environ.update(cli_env)
    try:
        settings = load(config)
        keeper = Keeper(FileStorage(tmp / "tokens"))
        for name, token in settings.tokens.items():
            keeper.rotator(name, build_source(token), build_transform(token)).refresh()
        keeper.storage.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    request = json.dumps({"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                          "kind": "CredentialProviderRequest", "image": f"{ECR_HOST}/app:1"})
    commands: dict[str, tuple[list[str], str, dict[str, str]]] = {
        "aws ecr get-login-password (moto)": ([aws, "ecr", "get-login-password"], "", cli_env),
        "docker-credential-awstoken get": ([str(BIN / "docker-credential-awstoken"), "get"],
                                           ECR_HOST, door_env),
        "awstoken kubelet-credential-provider": ([str(BIN / "awstoken"),
                                                  "kubelet-credential-provider"], request, door_env),
        "awstoken-kubelet-credential-provider": ([str(BIN / "awstoken-kubelet-credential-provider")],
                                                 request, door_env),
    }
    if (BIN / "keyring").exists():
        commands["keyring --mode creds get URL"] = (
            [str(BIN / "keyring"), "--mode", "creds", "get", INDEX], "", door_env)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    labels = list(commands)
    for i in range(rounds + 1):
        order = labels[i % len(labels):] + labels[:i % len(labels)]
        for label in order:
            sample = timed(*commands[label])
            if i:  # round 0 warms the page cache and the .pyc files
                results[label].append(sample)
    report(results, rounds)


def report(results: dict[str, list[tuple[float, float]]], rounds: int) -> None:
    base = statistics.median(w for w, _ in results["aws ecr get-login-password (moto)"])
    load1 = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {rounds} rounds, "
          f"load average at the end {load1:.1f}")
    print()
    print("| command | wall (median) | CPU (median) | wall / aws CLI wall |")
    print("|---|---|---|---|")
    for label, samples in results.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"| {label} | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms | {wall / base:.3f} |")


if __name__ == "__main__":
    main()
