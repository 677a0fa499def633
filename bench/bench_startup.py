"""Start-up CPU of awstoken's console scripts: what one short process costs, per entry point.

    python bench/bench_startup.py [--src DIR[,DIR...]] [--runs 15] [--only LABEL[,LABEL...]]

docker runs the credential helper for every pull, the kubelet its plugin for every image,
and the test suite starts the ``awstoken`` script hundreds of times: each of those pays for
the interpreter and for what the entry point imports before it answers. Each case runs the
venv's real console scripts (``awstoken``, ``docker-credential-awstoken``,
``awstoken-kubelet-credential-provider``) against one configuration file with a file
storage that already holds a usable token, so no source runs:

- ``python -c pass``: the interpreter alone, the baseline of the ratios;
- ``awstoken --version``, ``awstoken --help``;
- ``awstoken check -c FILE``, ``awstoken status -c FILE``, ``awstoken get -c FILE NAME``;
- ``docker-credential-awstoken get``: the fast path (the index a previous answer left,
  ``_doors/fast.py``) and, with ``-c FILE``, the full path (load and validate the file);
- ``awstoken-kubelet-credential-provider``: the fast path and, with ``-c FILE``, the full one;
- ``awstoken serve -c FILE``: from start until its proxy port accepts, then SIGTERM (its
  shutdown included), and its peak resident memory at that moment (VmHWM).

The figure is CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)`` around each run:
the child and whatever it reaped), not wall time: on a shared machine CPU seconds are what
the run costs, and they vary less than wall time. Each case runs once untimed (bytecode
compiled; ``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment, as
scripts/test.sh does), then ``--runs`` times, cases and ``--src`` trees interleaved. The
table gives min and median milliseconds and the median as a multiple of ``python -c pass``
in the same run; with several trees, each tree's median over the first tree's. Each tree
runs with ``PYTHONPATH=TREE`` and this interpreter's console scripts (which import
``awstoken`` from the first tree on the path). Every run is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TIMEOUT = 60.0
PASSWORD = "bench-password"
TOKEN = "Basic YXdzOmJlbmNoLXBhc3N3b3Jk"  # base64 of aws:bench-password
REGISTRY = "r.example"
KUBELET_REQUEST = json.dumps({"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                              "kind": "CredentialProviderRequest", "image": f"{REGISTRY}/a:1"})


@dataclass
class Case:
    """One entry point: argv (a console script of this venv, or python), stdin, and what its
    output must contain (a run that does not answer is an error, not a figure)."""

    label: str
    argv: list[str]
    stdin: str = ""
    expect: str = ""
    serve_port: int | None = None  # for serve: the port to wait for, then SIGTERM


def write_files(work: Path) -> tuple[Path, int]:
    """The configuration file and a stored usable token; returns (config, serve's port)."""
    tokens = work / "tokens"
    tokens.mkdir(mode=0o700)
    now = time.time()
    record = {"value": TOKEN, "expires_at": now + 12 * 3600, "refreshed_at": now,
              "generation": 1, "leader": "bench:1"}
    (tokens / "repo.json").write_text(json.dumps(record))
    (tokens / "repo.json").chmod(0o600)
    port = free_port()
    config = work / "awstoken.toml"
    config.write_text(
        f'[storage]\npath = "{tokens}"\n\n'
        '[tokens.repo]\ncommand = "false"  # never runs: storage holds a usable token\n'
        f'basic_user = "aws"\nregistries = ["{REGISTRY}"]\n\n'
        f'[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:{free_port()}"\ntoken = "repo"\n\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{free_port()}"\n'
        'access_log = false\n')
    return config, port


def cases(config: Path, port: int) -> list[Case]:
    c = str(config)
    return [
        Case("python -c pass", [sys.executable, "-c", "pass"]),
        Case("awstoken --version", [str(BIN / "awstoken"), "--version"], expect="awstoken "),
        Case("awstoken --help", [str(BIN / "awstoken"), "--help"], expect="usage:"),
        Case("awstoken check", [str(BIN / "awstoken"), "check", "-c", c], expect=": ok"),
        Case("awstoken status", [str(BIN / "awstoken"), "status", "-c", c], expect="repo"),
        Case("awstoken get", [str(BIN / "awstoken"), "get", "-c", c, "repo"], expect=TOKEN),
        Case("docker helper get (fast)", [str(BIN / "docker-credential-awstoken"), "get"],
             stdin=REGISTRY, expect=PASSWORD),
        Case("docker helper get (full)", [str(BIN / "docker-credential-awstoken"), "-c", c, "get"],
             stdin=REGISTRY, expect=PASSWORD),
        Case("kubelet plugin (fast)", [str(BIN / "awstoken-kubelet-credential-provider")],
             stdin=KUBELET_REQUEST, expect=PASSWORD),
        Case("kubelet plugin (full)", [str(BIN / "awstoken-kubelet-credential-provider"), "-c", c],
             stdin=KUBELET_REQUEST, expect=PASSWORD),
        Case("awstoken serve (to ready)", [str(BIN / "awstoken"), "serve", "-c", c], serve_port=port),
    ]


def environment(tree: str, index: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AWSTOKEN_", "PYTHON", "DOCKER_"))}
    env.update(PYTHONPATH=str(Path(tree).resolve()), AWSTOKEN_CONFIG=str(config),
               AWSTOKEN_DIR=str(index),  # the doors' fast index, one per tree
               AWS_EC2_METADATA_DISABLED="true")
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(case: Case, env: dict[str, str]) -> float:
    """One run of ``case``: its CPU seconds (the child and what it reaped)."""
    before = _children_cpu()
    if case.serve_port is not None:
        _serve(case, env)
    else:
        out = subprocess.run(case.argv, input=case.stdin, env=env,
                             capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if out.returncode or case.expect not in out.stdout:
            raise SystemExit(f"{case.label}: exit {out.returncode}\n{out.stdout[-1000:]}"
                             f"\n{out.stderr[-2000:]}")
    return _children_cpu() - before


#: serve's peak resident memory at ready (VmHWM, KiB), per source tree (PYTHONPATH).
SERVE_PEAK_RSS: dict[str, list[int]] = {}


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _serve(case: Case, env: dict[str, str]) -> None:
    assert case.serve_port is not None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(case.argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_accepts(case.serve_port, proc)
            SERVE_PEAK_RSS.setdefault(env["PYTHONPATH"], []).append(_peak_rss(proc.pid))
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
        if code:
            err.seek(0)
            raise SystemExit(f"{case.label}: exit {code}\n{err.read()[-2000:].decode()}")


def _wait_accepts(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.005)
    raise SystemExit(f"serve: nothing accepted on 127.0.0.1:{port} in {TIMEOUT:.0f}s")


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Path, int]]:
    with tempfile.TemporaryDirectory(prefix="awstoken-bench-startup-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        config, port = write_files(work)
        yield work, config, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", default=str(HERE.parent / "src"))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated labels (python -c pass always runs)")
    args = parser.parse_args()
    trees = args.src.split(",")
    with workspace() as (work, config, port):
        chosen = [c for c in cases(config, port) if not args.only or c.label == "python -c pass"
                  or c.label in args.only.split(",")]
        envs = {tree: environment(tree, work / f"index-{i}", config) for i, tree in enumerate(trees)}
        for tree in trees:  # compile bytecode; the full paths leave the index the fast ones read
            for case in chosen:
                run(case, envs[tree])
        cpu: dict[str, dict[str, list[float]]] = {t: {c.label: [] for c in chosen} for t in trees}
        for _ in range(args.runs):
            for case in chosen:
                for tree in trees:
                    cpu[tree][case.label].append(run(case, envs[tree]))
    _table(trees, [c.label for c in chosen], cpu, args.runs)
    return 0


def _table(trees: list[str], labels: list[str], cpu: dict[str, dict[str, list[float]]],
           runs: int) -> None:
    print(f"CPU per run (user+sys, ms: min / median of {runs}; x python -c pass; load average "
          f"{os.getloadavg()[0]:.2f})")
    heads = [f"{Path(t).resolve().parent.name}/{Path(t).name}" for t in trees]
    extra = [f"{h} x {heads[0]}" for h in heads[1:]]
    print("| entry point | " + " | ".join(heads + extra) + " |")
    print("|---|" + "---|" * (len(heads) + len(extra)))
    for label in labels:
        cells, medians = [], []
        for tree in trees:
            values = cpu[tree][label]
            base = statistics.median(cpu[tree]["python -c pass"])
            median = statistics.median(values)
            medians.append(median)
            cells.append(f"{min(values) * 1000:.0f} / {median * 1000:.0f} ({median / base:.1f}x)")
        cells += [f"{m / medians[0]:.2f}" for m in medians[1:]]
        print(f"| {label} | " + " | ".join(cells) + " |")
    peaks = [SERVE_PEAK_RSS.get(str(Path(t).resolve()), []) for t in trees]
    if all(peaks):
        print("awstoken serve's peak RSS at ready (VmHWM, MiB, median): " + ", ".join(
            f"{h} {statistics.median(p) / 1024:.1f}" for h, p in zip(heads, peaks, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
