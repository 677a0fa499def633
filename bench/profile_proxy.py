"""Where the proxy's CPU goes on the small-request benchmark: py-spy proportions, kernel share.

    python bench/profile_proxy.py [--src DIR] [--seconds 10] [--rate 250] [--top 25]

Starts the same nginx origin as ``bench_proxy.py`` and the awstoken proxy of ``--src``
(pinned to CPU 1, wrk on CPU 0), drives it with ``wrk -t1 -c32`` and meanwhile samples it
with ``py-spy record --format raw`` (Python frames only: with ``--native`` the C frames of
uvloop, llhttp and the interpreter get attributed by unwinding heuristics that go wrong on
this VM's kernel and CPython build, and the proportions stop adding up). Prints the
user/system split of the proxy's CPU from ``/proc`` (the kernel share; ``perf stat`` gives
the same split), then the functions with the most samples: own (the frame on top) and
inclusive (anywhere on the stack). Needs ``py-spy`` (``pip install py-spy``) and root or
``ptrace`` rights over the proxy.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import free_port, nginx, process, wrk

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", default=str(HERE.parent / "src"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    with nginx() as ng, tempfile.TemporaryDirectory(prefix="awstoken-profile-") as tmp:
        port = free_port()
        argv = [sys.executable, str(HERE / "proxy_main.py"), f"http://127.0.0.1:{ng.origin_port}",
                str(port), "1"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(args.src).resolve())}
        with process(argv, port, cpu=1, env=env) as proc:
            url = f"http://127.0.0.1:{port}/small"
            wrk(url, seconds=1)  # warm-up
            raw = Path(tmp) / "stacks.txt"
            before = _times(proc.pid)
            sampler = subprocess.Popen([
                spy, "record", "--pid", str(proc.pid), "--rate", str(args.rate), "--duration",
                str(args.seconds), "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = wrk(url, seconds=args.seconds)
            _, errors = sampler.communicate(timeout=60)
            if sampler.returncode:
                print(errors.decode(errors="replace")[-2000:], file=sys.stderr)
            after = _times(proc.pid)
        stacks = raw.read_text() if raw.exists() else ""
    user, system = after[0] - before[0], after[1] - before[1]
    per = 1e6 / max(result.requests, 1)
    print(f"wrk: {result.rps:.0f} req/s; proxy CPU {1e6 * (user + system) / max(result.requests, 1):.1f}"
          f" us/req: user {user * per:.1f}, system (kernel) {system * per:.1f} "
          f"({100 * system / max(user + system, 1e-9):.0f}%); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _report(stacks, args.top)
    return 0


def _times(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _label(frame: str) -> str:
    """``name (path:line)`` as ``name (file)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})" if where else name


def _report(stacks: str, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_label(f) for f in stack.split(";")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        print("no samples (is py-spy allowed to attach?)")
        return
    print(f"{total} samples; own time (top of stack):")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("inclusive time:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    sys.exit(main())
