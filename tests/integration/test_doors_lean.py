"""Each door's import path stays lean: no botocore, no HTTP stack, no proxy, no redis-py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.doors import basic, no_aws_env, store

HEAVY = "{'botocore', 'boto3', 'aiohttp', 'httptools', 'uvloop', 'prometheus_client', 'redis'}"
DOORS = {
    "docker": "from awstoken._doors.docker import main\n"
              "assert main(['get'], stdin=io.StringIO('r.example'), stdout=io.StringIO()) == 0\n",
    "kubelet": "from awstoken._cli import main\n"
               "sys.stdin = io.StringIO('{\"apiVersion\": \"credentialprovider.kubelet.k8s.io/v1\", '\n"
               "    '\"kind\": \"CredentialProviderRequest\", \"image\": \"r.example/a:1\"}')\n"
               "sys.stdout, out = io.StringIO(), sys.stdout\n"
               "assert main(['kubelet-credential-provider']) == 0\nsys.stdout = out\n",
    "keyring": "import keyring\n"
               "assert keyring.get_password('https://i.example/simple/', 'aws') == 'pw-lean'\n",
}


@pytest.mark.parametrize("door", sorted(DOORS))
def test_door_imports_no_aws_sdk_and_no_proxy_stack(tmp_path: Path, door: str) -> None:
    if door == "keyring":
        pytest.importorskip("keyring")
    config = tmp_path / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "tokens"}"\n[tokens.repo]\ncommand = "false"\n'
                      'basic_user = "aws"\nregistries = ["r.example"]\n'
                      'indexes = ["https://i.example/simple/"]\n')
    store(tmp_path / "tokens", "repo", basic("aws", "pw-lean"))
    code = ("import io, sys\n" + DOORS[door] +
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY}), "
            "[m for m in sys.modules if m.startswith('awstoken.proxy')])\n")
    env = no_aws_env(tmp_path, config, {"PYTHON_KEYRING_BACKEND": "awstoken._doors.keyring.AwstokenKeyring"})
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[] []"
