"""``awstoken check`` refuses exactly what ``awstoken serve`` refuses, and warns the same.

Every case runs both commands as real processes on the same file: check exits 2 with the
problem; serve exits non-zero with the same problem, before any source runs (the source
would leave a marker file).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.cli import awstoken_cli
from tests.fixtures.ports import free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWSTOKEN_TEST_")}
    return subprocess.run([*awstoken_cli(), *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL, env={**base, **(env or {})})


def source(marker: Path) -> str:
    return f'[tokens.t]\ncommand = "touch {marker}; echo tok-value"\n'


def _server(extra: str = "") -> str:
    return (f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_listen = "off"\n{extra}'
            '[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:9"\ntoken = "t"\n')


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "empty file": (lambda m: "", "nothing to serve: configure [tokens.NAME]"),
    "socket directory missing": (
        lambda m: source(m) + '[server]\ntoken_listen = "unix:no-such-dir/t.sock"\n',
        "server.token_listen: unix:"),
    "password_env unset": (
        lambda m: '[storage]\ntype = "redis"\nurl = "redis://127.0.0.1:9/0"\n'
                  'password_env = "AWSTOKEN_TEST_UNSET"\n' + source(m) + _server(),
        "storage.password_env: the environment variable AWSTOKEN_TEST_UNSET is empty or unset"),
    "token secret unset": (
        lambda m: source(m) + '[server]\ntoken_listen = "unix:t.sock"\n'
                              'token_secret_env = "AWSTOKEN_TEST_UNSET"\n',
        "server.token_secret_env: the environment variable AWSTOKEN_TEST_UNSET is empty or unset"),
    "bearer tokens unset": (
        lambda m: source(m) + _server('bearer_tokens_env = "AWSTOKEN_TEST_UNSET"\n'),
        "server.bearer_tokens_env: the environment variable AWSTOKEN_TEST_UNSET"),
    "ca_file not a bundle": (
        lambda m: source(m) + _server('ca_file = "not-a-ca.pem"\n'),
        "server.ca_file: "),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_refuses_what_serve_refuses(tmp_path: Path, case: str) -> None:
    text, problem = CASES[case]
    marker = tmp_path / "source-ran"
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    config = tmp_path / "awstoken.toml"
    config.write_text(text(marker))
    checked = run("check", "-c", str(config))
    assert checked.returncode == 2, checked.stdout
    assert problem in checked.stderr
    assert checked.stderr.startswith(f"{config}: ")
    served = run("serve", "-c", str(config))
    assert served.returncode != 0
    assert problem in served.stderr
    assert "Traceback" not in served.stderr + checked.stderr
    assert not marker.exists(), "serve ran the source before refusing the file"


def test_check_accepts_what_serve_starts_with_once_the_environment_is_set(tmp_path: Path) -> None:
    config = tmp_path / "awstoken.toml"
    config.write_text(source(tmp_path / "m") + '[server]\ntoken_listen = "unix:t.sock"\n'
                      'token_secret_env = "AWSTOKEN_TEST_SECRET"\n')
    checked = run("check", "-c", str(config), env={"AWSTOKEN_TEST_SECRET": "s3cret"})
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""


def test_check_prints_the_resolved_storage_location(tmp_path: Path) -> None:
    config = tmp_path / "awstoken.toml"
    config.write_text(source(tmp_path / "m") + _server())
    checked = run("check", "-c", str(config), env={"AWSTOKEN_DIR": str(tmp_path / "store")})
    assert checked.returncode == 0, checked.stderr
    assert f"  storage: file ({tmp_path / 'store'})\n" in checked.stdout


def test_check_prints_the_redis_url_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "awstoken.toml"
    config.write_text('[storage]\ntype = "redis"\nurl = "redis://user:pa/ss@redis.example:6380/2"\n'
                      + source(tmp_path / "m") + _server())
    config.chmod(0o600)
    checked = run("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "  storage: redis (redis://***@redis.example:6380/2)\n" in checked.stdout
    assert "pa/ss" not in checked.stdout + checked.stderr
    assert "user" not in checked.stdout + checked.stderr


# -- insecure settings ------------------------------------------------------------------------

INSECURE = {
    "inline password": ('[storage]\ntype = "redis"\nurl = "redis://:hunter2@127.0.0.1:9/0"\n',
                        "", "storage.url: holds a password and"),
    "ssl_cert_reqs=none": ('[storage]\ntype = "redis"\n'
                           'url = "rediss://127.0.0.1:9/0?ssl_cert_reqs=none"\n', "",
                           "storage.url: ssl_cert_reqs=none"),
    "verify_tls off": ("", "verify_tls = false\n", "server.verify_tls = false"),
    "public listener": ("", "LISTEN0", "server.listen: 0.0.0.0 is not a loopback address"),
    "tcp token endpoint": ("", "token_listen = '127.0.0.1:PORT'\n",
                           "server.token_listen: 127.0.0.1:"),
}


def insecure_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    storage, server, warning = INSECURE[case]
    server = server.replace("PORT", str(free_port()))
    listen = f"0.0.0.0:{free_port()}" if server == "LISTEN0" else f"127.0.0.1:{free_port()}"
    server = "" if server == "LISTEN0" else server
    config = tmp_path / "awstoken.toml"
    config.write_text(f'{storage}[tokens.t]\ncommand = "echo tok-value"\n[server]\n'
                      f'listen = "{listen}"\nadmin_listen = "off"\n{server}[[routes]]\n'
                      'prefix = "/"\nupstream = "http://127.0.0.1:9"\ntoken = "t"\n')
    config.chmod(0o644)
    return config, warning


@pytest.mark.parametrize("case", sorted(INSECURE))
def test_check_warns_once_per_insecure_setting(tmp_path: Path, case: str) -> None:
    config, warning = insecure_file(tmp_path, case)
    checked = run("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    lines = checked.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: {config}: {warning}")
    assert "hunter2" not in checked.stdout + checked.stderr


def test_no_warning_for_a_private_file_or_protected_listener(tmp_path: Path) -> None:
    config, _ = insecure_file(tmp_path, "inline password")
    config.chmod(0o600)
    assert run("check", "-c", str(config)).stderr == ""
    config, _ = insecure_file(tmp_path, "public listener")
    config.write_text(config.read_text().replace("[server]\n", '[server]\nallow = ["10.0.0.0/8"]\n'))
    assert run("check", "-c", str(config)).stderr == ""
