"""`awstoken fetch` against moto and the stand-ins, through the installed console script."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.aws_standins import StandIn
from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.peer("moto")


def fetch(config: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("fetch", "-c", str(config), name, env=env, timeout=120)


@pytest.fixture
def config(tmp_path: Path, aws_cli: str) -> Path:
    path = tmp_path / "awstoken.toml"
    path.write_text(f"""
[tokens.ecr]
source = "ecr"
format = "Basic {{token}}"

[tokens.ecr-cli]
command = ["{aws_cli}", "ecr", "get-authorization-token", "--output", "json"]
token_path = "authorizationData[0].authorizationToken"
expiry_path = "authorizationData[0].expiresAt"
format = "Basic {{token}}"

[tokens.pypi]
source = "codeartifact"
domain = "my-domain"
domain_owner = "123456789012"
duration = "15m"
basic_user = "aws"

[tokens.db]
source = "rds"
host = "db.example.internal"
port = 3306
user = "app"
""")
    return path


@pytest.mark.usefixtures("moto_ecr_expiry")
def test_fetch_native_and_cli_ecr_print_the_same_header(config: Path,
                                                        aws_env: dict[str, str]) -> None:
    native = fetch(config, "ecr", aws_env)
    cli = fetch(config, "ecr-cli", aws_env)
    assert native.returncode == 0, native.stderr
    assert cli.returncode == 0, cli.stderr
    expected = "Basic " + base64.b64encode(b"AWS:123456789012-auth-token").decode()
    assert native.stdout == cli.stdout == expected + "\n"


def test_fetch_rejects_moto_unpatched_2015_expiry(config: Path, aws_env: dict[str, str]) -> None:
    proc = fetch(config, "ecr", aws_env)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("awstoken fetch: token 'ecr': the source returned a token "
                                  "that expired")
    assert "Traceback" not in proc.stderr


def test_fetch_codeartifact(config: Path, aws_env: dict[str, str], codeartifact: StandIn) -> None:
    proc = fetch(config, "pypi", aws_env)
    assert proc.returncode == 0, proc.stderr
    token = base64.b64decode(proc.stdout.strip().removeprefix("Basic ")).decode()
    assert token == f"aws:{codeartifact.token}"
    assert codeartifact.received[0].query["duration"] == ["900"]
    codeartifact.mode = "throttle"
    proc = fetch(config, "pypi", aws_env)
    assert proc.returncode == 1
    assert "codeartifact GetAuthorizationToken failed: ThrottlingException" in proc.stderr
    assert codeartifact.token not in proc.stderr


def test_fetch_rds(config: Path, aws_env: dict[str, str]) -> None:
    proc = fetch(config, "db", aws_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("db.example.internal:3306/?Action=connect&DBUser=app&")


def test_fetch_without_credentials(config: Path, aws_env: dict[str, str]) -> None:
    env = {k: v for k, v in aws_env.items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    proc = fetch(config, "ecr", env)
    assert proc.returncode == 1
    assert proc.stderr == ("awstoken fetch: token 'ecr': ecr: no AWS credentials found "
                           "(environment, profile, SSO or instance metadata)\n")
