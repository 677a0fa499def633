"""ngx_aws_token's README example, translated to Python, with the real aws CLI and moto."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import awstoken
from tests.fixtures.wait import wait_until

ECR_COMMAND = ("aws ecr get-authorization-token "
               "--query 'authorizationData[*].authorizationToken' --output text")


@pytest.fixture
def cli_on_path(aws_cli: str, use_aws_env: dict[str, str],
                monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PATH", f"{Path(aws_cli).parent}{os.pathsep}{os.environ['PATH']}")
    return use_aws_env


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[awstoken.FileStorage]:
    store = awstoken.FileStorage(tmp_path / "store", poll=0.1)
    awstoken.set_storage(store)
    yield store
    awstoken.default_keeper().stop()
    store.close()


def test_the_cli_prints_a_trailing_newline(cli_on_path: dict[str, str]) -> None:
    # The defect ngx_aws_token carried: io.popen's output went into the header as is.
    raw = subprocess.run(ECR_COMMAND, shell=True, capture_output=True, check=True).stdout
    assert raw.endswith(b"\n")


def test_readme_example_attaches_a_clean_basic_header(
        cli_on_path: dict[str, str], storage: awstoken.FileStorage) -> None:
    # aws_token.set_storage(ngx.shared.aws_token)
    # aws_token.rotate("ecr", "<command>", function(t) return "Basic " .. t end)
    awstoken.rotate("ecr", ECR_COMMAND, lambda token: "Basic " + token)
    wait_until(lambda: awstoken.token("ecr"), 30, "the first token")
    # ngx.req.set_header("Authorization", aws_token.token("ecr"))
    header = awstoken.token("ecr")
    assert header is not None
    assert header.startswith("Basic ") and header == header.strip()
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    assert user == "AWS" and password.endswith("-auth-token")
    record = storage.read("ecr")
    assert record is not None and record.generation == 1 and record.error is None


def test_create_and_manage_with_the_cli(cli_on_path: dict[str, str],
                                        storage: awstoken.FileStorage) -> None:
    created = awstoken.create(ECR_COMMAND, "Basic {token}")
    assert base64.b64decode(created.removeprefix("Basic ")).startswith(b"AWS:")
    assert awstoken.manage("ecr", ECR_COMMAND, "Basic {token}") == created
    assert awstoken.token("ecr") == created


def test_cli_failure_names_token_status_and_stderr(cli_on_path: dict[str, str],
                                                   storage: awstoken.FileStorage) -> None:
    with pytest.raises(awstoken.CommandError) as info:
        awstoken.manage("ecr", "aws ecr describe-repositories --repository-names nope")
    message = str(info.value)
    assert message.startswith("token 'ecr': command 'aws ecr describe-repositories")
    assert "RepositoryNotFoundException" in message
    assert "exited with status" in message
    assert info.value.returncode not in (None, 0)
