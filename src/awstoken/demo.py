"""The offline demo: ``python -m awstoken.demo`` (``--rotation`` for the multi-worker one).

It runs the product's main job with nothing from outside: a local stand-in for an ECR
registry that answers 401 without the right ``Authorization``, a stand-in for the ``aws``
CLI that prints a token (with the CLI's trailing newline), and a real ``awstoken serve``
process on the embedded default storage (a FileStorage). It sends a request with no
credentials through the proxy and prints what the upstream received, then
``awstoken status``, then stops the server with SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PASSWORD = "demo-password"  # noqa: S105 (a stand-in, not a secret)
TOKEN = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()
FAKE_AWS = f"""#!/bin/sh
# Stands in for: aws ecr get-authorization-token --query ... --output text
printf '%s\\n' '{TOKEN}'
"""


class _Registry(BaseHTTPRequestHandler):
    """A stand-in registry: 401 unless the request carries Basic AWS:<password>."""

    def do_GET(self) -> None:
        received = self.headers.get("Authorization")
        ok = received == f"Basic {TOKEN}"
        body = json.dumps({"path": self.path, "authorization": received} if ok else
                          {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http on loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(admin: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"awstoken serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            if _get(f"{admin}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"awstoken serve was not ready after 30 s:\n{log.read_text()}")


def serve_demo() -> int:
    registry = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{registry.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="awstoken-demo-") as tmp:
        env = {**os.environ, "AWSTOKEN_DIR": str(Path(tmp) / "store")}  # the default storage
        fake = Path(tmp) / "aws"
        fake.write_text(FAKE_AWS)
        fake.chmod(0o755)
        port, admin_port = _free_port(), _free_port()
        config = Path(tmp) / "awstoken.toml"
        config.write_text(f"""\
# No [storage] table: the embedded default, a FileStorage shared by the host's processes.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"

[tokens.ecr]
command = "{fake} ecr get-authorization-token --query 'authorizationData[*].authorizationToken' --output text"
format = "Basic {{token}}"
interval = "6h"

[[routes]]
prefix = "/"
upstream = "{upstream}"
token = "ecr"
""")
        print(f"== {config.name} ==\n{config.read_text()}")
        log = Path(tmp) / "serve.log"
        cli = [sys.executable, "-m", "awstoken._cli"]
        with open(log, "wb") as out:
            server = subprocess.Popen([*cli, "serve", "-c", str(config)], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{admin_port}", server, log)
            status, _ = _get(f"{upstream}/v2/")
            print(f"GET {upstream}/v2/ (the registry itself, no credentials): HTTP {status}")
            status, body = _get(f"http://127.0.0.1:{port}/v2/")
            print(f"GET http://127.0.0.1:{port}/v2/ (through awstoken, no credentials): HTTP {status}")
            seen = json.loads(body).get("authorization") or ""
            print(f"  the registry received  Authorization: {seen}")
            print(f"  which decodes to       {base64.b64decode(seen.removeprefix('Basic ')).decode()!r}"
                  "  (no trailing newline from the CLI)")
            print("\n== awstoken status ==")
            sys.stdout.flush()
            subprocess.run([*cli, "status", "-c", str(config)], env=env, check=False)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(30)
            registry.shutdown()
        print(f"\n== awstoken serve log (stopped by SIGTERM, exit status {code}) ==")
        print(log.read_text().rstrip())
    return 0 if status == 200 and seen == f"Basic {TOKEN}" and code == 0 else 1


def main() -> int:
    if "--rotation" in sys.argv[1:]:
        from ._demo_rotation import main as rotation

        return rotation()
    return serve_demo()


if __name__ == "__main__":
    sys.exit(main())
