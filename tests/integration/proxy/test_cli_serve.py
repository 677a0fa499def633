"""``awstoken serve -c FILE`` as a real process: token attached, admin up, clean SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.fixtures import processes
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.proxy import Upstream
from tests.fixtures.wait import wait_until

from .conftest import call


def test_awstoken_serve_from_config(tmp_path: Path, upstream: Upstream) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "echo cli-secret-value"
format = "Bearer {{token}}"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[[routes]]
prefix = "/"
upstream = "{upstream.url}"
token = "ecr"
""")
    processes.issue("Bearer cli-secret-value")
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        wait_for_port(admin)
        # Listening comes before the first token: ready once it is in.
        wait_until(lambda: call(f"http://127.0.0.1:{admin}", "GET", "/readyz").status == 200,
                   30, "serve ready")
        reply = call(f"http://127.0.0.1:{port}", "GET", "/v2/")
        assert reply.status == 200
        seen = json.loads(reply.body)
        assert ["Authorization", "Bearer cli-secret-value"] in seen["headers"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
        processes.expose("awstoken serve", out + err)
    assert '"GET /v2/" 200' in err
    assert "cli-secret-value" not in err
