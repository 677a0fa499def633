"""examples/nginx/nginx-lua.conf with Debian's lua-nginx-module and a real `awstoken serve`.

Port 5000 of the example asks the token endpoint (ngx.location.capture), port 5001 reads the
file sink. awstoken runs as its own process from a configuration file without routes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import processes
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.nginx import (
    EXAMPLES,
    base_replacements,
    recording_upstream,
    render,
    require_lua_module,
    running_nginx,
    )
from tests.fixtures.nginx import request as http_request
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.wait import wait_until

RAW_TOKEN = "QVdTOmx1YS10b2tlbg" * 400  # 7.2 KB, longer than nginx's 4 KiB buffers


@pytest.fixture
def awstoken_config(short_dir: Path) -> tuple[Path, int]:
    (short_dir / "raw-token").write_text(RAW_TOKEN + "\n")
    admin = free_port()
    config = short_dir / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{short_dir / 'state'}"

[tokens.ecr]
command = ["cat", "{short_dir / 'raw-token'}"]
format = "Basic {{token}}"
sink = "{short_dir / 'run' / 'ecr.header'}"
sink_mode = "0640"

[server]
admin_listen = "127.0.0.1:{admin}"
token_listen = "unix:{short_dir / 'token.sock'}"
""")
    return config, admin


@pytest.fixture
def awstoken_process(awstoken_config: tuple[Path, int]) -> Iterator[subprocess.Popen[str]]:
    """Started by the test (``start()``), stopped here."""
    procs: list[subprocess.Popen[str]] = []
    processes.issue(RAW_TOKEN)

    def start() -> subprocess.Popen[str]:
        config, admin = awstoken_config
        proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        wait_for_port(admin)
        return proc

    yield start  # type: ignore[misc]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _, err = proc.communicate(timeout=30)
        processes.expose("awstoken serve", err)
        assert RAW_TOKEN not in err


def test_lua_reads_the_token_from_the_endpoint_and_from_the_sink(
        short_dir: Path, awstoken_process: object) -> None:
    require_lua_module()
    endpoint_port, sink_port = free_port(), free_port()
    sock = short_dir / "token.sock"
    sink = short_dir / "run" / "ecr.header"
    with recording_upstream() as upstream:
        config = render((EXAMPLES / "nginx-lua.conf").read_text(), {
            **base_replacements(short_dir / "nginx"),
            "server unix:/run/awstoken/token.sock;": f"server unix:{sock};",
            "/run/awstoken/ecr.header": str(sink),
            "listen 127.0.0.1:5000;": f"listen 127.0.0.1:{endpoint_port};",
            "listen 127.0.0.1:5001;": f"listen 127.0.0.1:{sink_port};",
            "server 123456789012.dkr.ecr.eu-west-1.amazonaws.com:443;":
                f"server 127.0.0.1:{upstream.port};",
            "proxy_pass https://ecr;": "proxy_pass http://ecr;",
        }, times={"/run/awstoken/ecr.header": 3,
                  "proxy_pass https://ecr;": 2})
        with running_nginx(short_dir / "nginx", config, [endpoint_port, sink_port]) as nginx:
            def get(port: int, method: str = "GET", body: bytes | None = None) -> int:
                return http_request(("127.0.0.1", port), method, "/v2/repo/manifests/latest",
                                    {"Authorization": "Basic Y2xpZW50OmNyZWRz"}, body).status

            # awstoken not running yet: no socket, no file. nginx refuses; nothing goes upstream.
            assert get(endpoint_port) == 503
            assert get(sink_port) == 503
            assert upstream.seen == []
            assert "awstoken: no token for ecr (token endpoint status 502)" in nginx.error_log()
            assert f"awstoken: no token in {sink}" in nginx.error_log()

            awstoken_process()  # type: ignore[operator]
            wait_until(lambda: sock.exists() and sink.exists(), 20, "the endpoint socket and the sink")
            assert os.stat(sink).st_mode & 0o777 == 0o640
            expected = "Basic " + RAW_TOKEN
            for port in (endpoint_port, sink_port):
                for method, body in (("GET", None), ("PUT", b"layer"), ("HEAD", None)):
                    assert get(port, method, body) == 200, (port, method, nginx.error_log()[-2000:])
                    seen = upstream.seen[-1]
                    assert (seen.method, seen.authorization) == (method, expected)
            assert all(seen == expected for seen in upstream.authorizations())
            logs = nginx.error_log() + nginx.access_log()
            assert RAW_TOKEN not in logs
