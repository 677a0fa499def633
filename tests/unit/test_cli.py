"""The awstoken command line: check and fetch, help, version, errors without tracebacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from awstoken import __version__
from awstoken._cli import commands, main
from tests.fixtures import cli

GOOD = """
[storage]
type = "memory"

[tokens.ecr]
command = "printf '%s' QVdTOnNlY3JldA=="
format = "Basic {token}"

[tokens.pypi]
command = ["printf", "%s", "pypi-token"]
basic_user = "aws"

[tokens.broken]
command = "echo oops >&2; exit 3"

[[routes]]
prefix = "/v2/"
upstream = "https://registry.example"
token = "ecr"
"""

BAD = """
[storage]
type = "memroy"

[tokens.ecr]
comand = "x"
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli.run_cli(*args, env=env, timeout=60)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


def test_check_a_good_file(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{good}: ok\n")
    assert "token ecr: source command" in out
    assert "route /v2/ -> https://registry.example (token ecr)" in out
    assert "QVdTOnNlY3JldA" not in out


def test_check_shows_the_token_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGINX_SECRET", "s3cret")  # check refuses an unset one, as serve does
    path = tmp_path / "endpoint.toml"
    path.write_text("[tokens.ecr]\ncommand = 'x'\n[server]\ntoken_listen = ['unix:t.sock', "
                    "'127.0.0.1:9091']\ntoken_secret_env = 'NGINX_SECRET'\n")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"token endpoint unix:{tmp_path / 't.sock'} (GET /token/NAME" in out
    assert "token endpoint 127.0.0.1:9091 (GET /token/NAME for nginx auth_request, secret from " \
           "$NGINX_SECRET)" in out


def test_check_quiet(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-q", "-c", str(good)]) == 0
    assert capsys.readouterr().out == ""


def test_check_a_bad_file_lists_every_problem_and_exits_2(bad: Path) -> None:
    proc = run_cli("check", "-c", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines == [
        f"{bad}: storage.type: expected 'memory' or 'file' or 'redis', got a string "
        "('memroy'; did you mean 'memory'?)",
        f"{bad}: tokens.ecr.comand: unknown key; did you mean 'command'?",
        f"{bad}: tokens.ecr.command: missing; expected a command line (string) or an argv array "
        "of non-empty strings, or a source = ecr | ecr-public | codeartifact | eks | rds",
    ]


@pytest.mark.parametrize("text", ["[tokens\n", "\xff\xfe"])
def test_check_unparsable_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(text.encode("latin-1"))
    proc = run_cli("check", "-c", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{path}: ")
    assert "Traceback" not in proc.stderr


def test_check_a_missing_file(tmp_path: Path) -> None:
    proc = run_cli("check", "-c", str(tmp_path / "none.toml"))
    assert proc.returncode == 2
    assert "none.toml: cannot read the configuration file: No such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_defaults_to_the_environment(good: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "AWSTOKEN_CONFIG"}
    assert run_cli("check", env={**env, "AWSTOKEN_CONFIG": str(good)}).returncode == 0
    proc = run_cli("check", env=env)
    assert proc.returncode == 2
    assert "no configuration file: give -c FILE or set AWSTOKEN_CONFIG" in proc.stderr


def test_fetch_prints_the_header_value(good: Path) -> None:
    proc = run_cli("fetch", "-c", str(good), "ecr")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Basic QVdTOnNlY3JldA==\n", "")
    proc = run_cli("fetch", "-c", str(good), "pypi")
    assert proc.stdout == "Basic YXdzOnB5cGktdG9rZW4=\n"


def test_fetch_a_failing_source(good: Path) -> None:
    proc = run_cli("fetch", "-c", str(good), "broken")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == ("awstoken fetch: token 'broken': command 'echo oops >&2; exit 3' "
                           "exited with status 3: oops\n")
    assert "Traceback" not in proc.stderr


def test_fetch_an_unknown_token(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "-c", str(good), "nope"]) == 1
    assert capsys.readouterr().err == (
        f"awstoken fetch: {good}: no [tokens.nope] table (tokens: broken, ecr, pypi)\n")


def test_fetch_with_a_bad_file(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "-c", str(bad), "ecr"]) == 1
    err = capsys.readouterr().err
    assert err.count("awstoken fetch: ") == 3
    assert "tokens.ecr.comand: unknown key" in err


def test_help_on_every_command() -> None:
    names = [module.NAME for module in commands()]
    assert {"check", "fetch"} <= set(names)
    top = run_cli("--help")
    assert top.returncode == 0
    for name in names:
        assert name in top.stdout
        proc = run_cli(name, "--help")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: awstoken {name}")


def test_version() -> None:
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout) == (0, f"awstoken {__version__}\n")


def test_usage_errors_exit_2() -> None:
    proc = run_cli("fetch")
    assert proc.returncode == 2
    assert "the following arguments are required: NAME" in proc.stderr
    assert run_cli().returncode == 2
    assert run_cli("no-such-command").returncode == 2
