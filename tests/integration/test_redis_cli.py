"""`awstoken status` and `awstoken get` (the real console script) with a Redis storage whose
password would break naive URL parsing: it must never appear in what they print."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import awstoken_cli
from tests.fixtures.ports import free_port

#: Characters that end the userinfo for urllib's parser ('/', '?', '#'): a URL with such a
#: password is split in the wrong place, and the password ends up in the "host" or "path".
PASSWORDS = ["pa55/w0rd-SECRETPART", "pa55#w0rd-SECRETPART", "pa55?w0rd-SECRETPART",
             "pa55@w0rd/SECRET#PART?x"]


def run(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*awstoken_cli(), *args, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def fragments(password: str) -> list[str]:
    """The password and every piece of it long enough to identify it."""
    pieces = [password]
    for sep in "/?#@":
        pieces += [p for part in pieces for p in part.split(sep)]
    return sorted({p for p in pieces if len(p) >= 5})


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("get", "t")])
def test_a_redis_password_with_url_delimiters_never_reaches_the_output(
        tmp_path: Path, password: str, command: tuple[str, ...]) -> None:
    # Nothing listens on the port: the command fails, naming the Redis URL in its error.
    port = free_port()
    cfg = tmp_path / "awstoken.toml"
    cfg.write_text(f"""
[storage]
type = "redis"
url = "redis://:{password}@127.0.0.1:{port}/0"

[tokens.t]
command = "echo x"
""")
    out = run(cfg, *command)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    # Either the config refuses the URL (without echoing it) or the Redis error names it.
    assert "storage.url" in text or "127.0.0.1" in text, text
    leaked = [f for f in fragments(password) if f in text]
    assert not leaked, f"{leaked} printed: {text}"


@pytest.mark.parametrize("password", PASSWORDS[:3])
def test_a_redis_password_from_the_environment_never_reaches_the_output(
        tmp_path: Path, password: str) -> None:
    port = free_port()
    cfg = tmp_path / "awstoken.toml"
    cfg.write_text(f"""
[storage]
type = "redis"
url = "redis://127.0.0.1:{port}/0"
password_env = "AWSTOKEN_TEST_PW"

[tokens.t]
command = "echo x"
""")
    for command in (("status",), ("get", "t")):
        out = run(cfg, *command, env={"AWSTOKEN_TEST_PW": password})
        text = out.stdout + out.stderr
        assert out.returncode != 0 and "Traceback" not in text
        leaked = [f for f in fragments(password) if f in text]
        assert not leaked, f"{leaked} printed: {text}"
