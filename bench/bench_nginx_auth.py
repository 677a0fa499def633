"""nginx auth_request benchmark: examples/nginx/nginx.conf against the same nginx with a fixed
header, in one run, against one origin.

    .venv/bin/python bench/bench_nginx_auth.py [--seconds 5] [--runs 3] [--token-bytes 7000]

Variants, each one nginx with 1 worker on CPU 1, rendered from the shipped example (only its
paths and ports changed, plus what the variant says):

- ``fixed header``: the example without its two auth_request lines, and
  ``proxy_set_header Authorization "<the token>"`` instead of ``$awstoken``: the baseline.
  nginx refuses a word longer than 4096 bytes in its configuration, so a longer token is
  written as ``set`` chunks joined in the header (``"$fixed0$fixed1"``).
- ``auth_request + proxy_cache``: the example as shipped (awstoken's answers cached by nginx
  for max-age 5 s).
- ``auth_request, no cache``: the example without ``proxy_cache``: every request asks awstoken.

awstoken (``awstoken serve -c FILE``, no routes, the token endpoint on a unix socket) runs on
CPU 1 too, so its cost lands on the same core as nginx's. The origin (nginx, 1 worker,
``return 200 "ok"``) and wrk (-t1 -c32) run on CPU 0. The variants are measured in turn,
``--runs`` times, interleaved; the table gives the median of each. CPU per request is the
nginx tree's and, apart, awstoken's (utime+stime from /proc over the measured run); the CPU
ratio is the baseline's nginx CPU over the variant's nginx + awstoken CPU. Bounded in time;
talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Measured, free_port, measure, nginx, pin, process, wait_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nginx" / "nginx.conf"
AUTH_LINES = ("            auth_request /_awstoken/ecr;\n",
              "            auth_request_set $awstoken $upstream_http_x_awstoken_value;\n")


def fixed_header(token: str) -> str:
    """``proxy_set_header Authorization`` with ``token``, in chunks nginx's parser accepts."""
    if len(token) <= 4000:
        return f'proxy_set_header Authorization "{token}";'
    chunks = [token[i:i + 4000] for i in range(0, len(token), 4000)]
    sets = "".join(f'set $fixed{i} "{chunk}";\n            ' for i, chunk in enumerate(chunks))
    joined = "".join(f"$fixed{i}" for i in range(len(chunks)))
    return f'{sets}proxy_set_header Authorization "{joined}";'


def render(variant: str, directory: Path, port: int, origin_port: int, sock: str,
           token: str) -> str:
    """The example, runnable unprivileged under ``directory``, changed as ``variant`` says."""
    text = EXAMPLE.read_text()
    temp = "".join(f"\n    {kind}_temp_path {directory}/{kind};"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    replacements = {
        "user www-data;": "user root;" if os.geteuid() == 0 else "",
        "worker_processes auto;": "worker_processes 1;",
        "pid /run/nginx.pid;": f"pid {directory}/nginx.pid;",
        "error_log /var/log/nginx/error.log;": f"error_log {directory}/error.log warn;",
        # As the harness's baseline proxy: no access log, long keep-alive client connections.
        "access_log /var/log/nginx/access.log;": "access_log off; keepalive_requests 1000000;",
        "http {": "http {" + temp,
        "server unix:/run/awstoken/token.sock;": f"server unix:{sock};",
        "/run/nginx-awstoken-cache": str(directory / "cache"),
        "listen 127.0.0.1:5000;": f"listen 127.0.0.1:{port};",
        "server 123456789012.dkr.ecr.eu-west-1.amazonaws.com:443;":
            f"server 127.0.0.1:{origin_port};",
        "proxy_pass https://ecr;": "proxy_pass http://ecr;",
    }
    if variant == "fixed":
        for line in AUTH_LINES:
            replacements[line] = ""
        replacements["proxy_set_header Authorization $awstoken;"] = fixed_header(token)
    elif variant == "nocache":
        replacements["            proxy_cache awstoken;\n"] = ""
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise SystemExit(f"the example changed: {old!r} occurs {text.count(old)} times")
        text = text.replace(old, new)
    return "daemon off;\n" + text


@contextlib.contextmanager
def example_nginx(variant: str, root: Path, origin_port: int, sock: str,
                  token: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of one nginx running the example as ``variant``, pinned to CPU 1."""
    directory = root / variant
    directory.mkdir()
    directory.chmod(0o755)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(render(variant, directory, port, origin_port, sock, token))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(pin([binary, "-p", str(directory), "-c", str(conf), "-e",
                                 str(directory / "error.log")], 1))
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def endpoint_answers(admin: int) -> float:
    """How many 204s the token endpoint has given (its Prometheus counter)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    match = re.search(r'^awstoken_token_endpoint_requests_total\{status="204",token="ecr"\} '
                      r'([\d.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--token-bytes", type=int, default=7000,
                        help="length of the header value (ECR tokens can exceed 4 KiB)")
    args = parser.parse_args()
    raw = ("QVdTOmJlbmNoLXRva2Vu" * (args.token_bytes // 16 + 1))[:args.token_bytes - 6]
    token = "Basic " + raw
    with nginx() as ng, tempfile.TemporaryDirectory(prefix="awstoken-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        sock = str(root / "token.sock")
        admin = free_port()
        (root / "token").write_text(raw)
        config = root / "awstoken.toml"
        config.write_text(f"""
[storage]
type = "memory"
[tokens.ecr]
command = ["cat", "{root / 'token'}"]
format = "Basic {{token}}"
[server]
admin_listen = "127.0.0.1:{admin}"
token_listen = "unix:{sock}"
token_socket_mode = "0660"
""")
        cli = Path(sys.executable).parent / "awstoken"
        argv = [str(cli), "serve", "-c", str(config)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        variants = {"fixed": "fixed header (baseline)",
                    "cached": "auth_request + proxy_cache (as shipped)",
                    "nocache": "auth_request, no cache"}
        results: dict[str, list[Measured]] = {v: [] for v in variants}
        answers: dict[str, list[float]] = {v: [] for v in variants}
        with process(argv, admin, cpu=1, env=env) as awstoken, contextlib.ExitStack() as stack:
            wait_port(admin)
            ports = {v: stack.enter_context(example_nginx(v, root, ng.origin_port, sock, token))
                     for v in variants}
            for _ in range(args.runs):
                for variant, (port, pid) in ports.items():
                    before = endpoint_answers(admin)
                    results[variant].append(measure(variants[variant],
                                                    f"http://127.0.0.1:{port}/small", pid,
                                                    seconds=args.seconds, also=[awstoken.pid]))
                    answers[variant].append(endpoint_answers(admin) - before)
            assert awstoken.poll() is None
        base = statistics.median(r.wrk.rps for r in results["fixed"])
        base_cpu = statistics.median(r.cpu_us_per_req for r in results["fixed"])
        print(f"nginx (1 worker, CPU 1) in front of an nginx origin, wrk -t1 -c32, "
              f"{args.seconds} s x {args.runs} runs (median); header value {len(token)} bytes")
        print("| variant | req/s | x fixed header | p50 ms | p99 ms | nginx CPU us/req | "
              "awstoken CPU us/req | x fixed header (CPU) | awstoken answers per run | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for variant, name in variants.items():
            rows = results[variant]
            rps = statistics.median(r.wrk.rps for r in rows)
            cpu = statistics.median(r.cpu_us_per_req for r in rows)
            extra = statistics.median(r.also_cpu_us_per_req for r in rows)
            print(f"| {name} | {rps:.0f} | {rps / base:.2f} | "
                  f"{statistics.median(r.wrk.p50_ms for r in rows):.2f} | "
                  f"{statistics.median(r.wrk.p99_ms for r in rows):.2f} | "
                  f"{cpu:.0f} | {extra:.1f} | {base_cpu / (cpu + extra):.2f} | "
                  f"{statistics.median(answers[variant]):.0f} | "
                  f"{sum(r.wrk.errors for r in rows)} |")
        print("runs (req/s): " + "; ".join(
            f"{variant} " + ", ".join(f"{r.wrk.rps:.0f}" for r in results[variant])
            for variant in variants))


if __name__ == "__main__":
    main()
