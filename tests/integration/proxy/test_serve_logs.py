"""``awstoken serve`` logging as a real process: level in every line, JSON lines, log level,
insecure-setting warnings at start, libraries kept quiet."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
from pathlib import Path

from awstoken import _logging
from tests.fixtures.cli import awstoken_cli
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.proxy import Upstream
from tests.fixtures.wait import wait_until

from .conftest import call

SECRET = "log-secret-value"
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def serve_once(tmp_path: Path, upstream: Upstream, *args: str, server: str = "") -> str:
    """Run serve, send one request through it, stop it with SIGTERM; its stderr."""
    port = free_port()
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "echo {SECRET}"
format = "Bearer {{token}}"

[server]
listen = "127.0.0.1:{port}"
admin_listen = "off"
{server}

[[routes]]
prefix = "/"
upstream = "{upstream.url}"
token = "ecr"
""")
    proc = subprocess.Popen([*awstoken_cli(), "serve", "-c", str(config), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        # The port listens before the first token is in (a request would get 503 "not
        # available yet"): wait for serve to store it.
        wait_until((tmp_path / "tokens" / "ecr.json").exists, 30, "the first token stored")
        assert call(f"http://127.0.0.1:{port}", "GET", "/v2/").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert SECRET not in err
    return err


def test_text_lines_carry_the_level(tmp_path: Path, upstream: Upstream) -> None:
    err = serve_once(tmp_path, upstream)
    lines = err.splitlines()
    assert any("refreshed" in line for line in lines)
    assert any('"GET /v2/" 200' in line for line in lines)
    assert [line for line in lines if not TEXT_LINE.match(line)] == []


def test_json_lines_for_log_shippers(tmp_path: Path, upstream: Upstream) -> None:
    err = serve_once(tmp_path, upstream, "--log-format", "json")
    entries = [json.loads(line) for line in err.splitlines()]
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert any(e["logger"] == "awstoken.access" and '"GET /v2/" 200' in e["message"]
               for e in entries)
    assert any(e["level"] == "info" and "refreshed" in e["message"] for e in entries)


def test_log_format_and_level_from_the_file(tmp_path: Path, upstream: Upstream) -> None:
    err = serve_once(tmp_path, upstream, server='log_format = "json"\nlog_level = "warning"\n'
                                                'verify_tls = false')
    entries = [json.loads(line) for line in err.splitlines()]
    # Only the warning about verify_tls: info lines (refresh, access log) are below the level.
    assert [e["level"] for e in entries] == ["warning"]
    assert "server.verify_tls = false" in entries[0]["message"]


def test_the_command_line_overrides_the_file(tmp_path: Path, upstream: Upstream) -> None:
    err = serve_once(tmp_path, upstream, "--log-level", "info", "--log-format", "text",
                     server='log_format = "json"\nlog_level = "error"')
    assert any("refreshed" in line and TEXT_LINE.match(line) for line in err.splitlines())


def test_a_bad_log_level_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "awstoken.toml"
    config.write_text('[tokens.t]\ncommand = "echo x"\n[server]\nlog_level = "loud"\n'
                      'token_listen = "unix:t.sock"\n')
    proc = subprocess.run([*awstoken_cli(), "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "server.log_level: expected" in proc.stderr and "'loud'" in proc.stderr
    proc = subprocess.run([*awstoken_cli(), "serve", "-c", str(config), "--log-level", "loud"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


def test_libraries_log_at_warning_unless_asked() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        _logging.setup("debug")
        assert logging.getLogger("awstoken").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("botocore").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)
        _logging.setup("info,botocore=debug")
        assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("urllib3").isEnabledFor(logging.INFO)
    finally:
        for name in (*_logging.THIRD_PARTY, "botocore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_serve_warns_once_per_insecure_setting(tmp_path: Path, upstream: Upstream) -> None:
    endpoint = free_port()
    err = serve_once(tmp_path, upstream, server=f'verify_tls = false\ntoken_listen = '
                                                f'"127.0.0.1:{endpoint}"')
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, warnings
    assert "server.verify_tls = false" in warnings[0]
    assert f"server.token_listen: 127.0.0.1:{endpoint} is TCP without" in warnings[1]
