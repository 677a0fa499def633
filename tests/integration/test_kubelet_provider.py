"""awstoken kubelet-credential-provider: the JSON contract of credentialprovider.kubelet.k8s.io."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from awstoken import FileStorage, Token
from tests.fixtures.doors import CountingSource, basic, door, no_aws_env, run_door, store

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
GROUP = "credentialprovider.kubelet.k8s.io"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubelet" / "credential-provider-config.yaml"
# metav1.Duration as Go prints it: hours, minutes, seconds (this provider sends whole seconds).
GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s")


def _seconds(duration: str) -> int:
    match = GO_DURATION.fullmatch(duration)
    assert match, duration
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def _check_response_shape(response: dict[str, Any], api: str) -> None:
    """The documented CredentialProviderResponse: kind/apiVersion, cacheKeyType one of
    Image/Registry/Global, cacheDuration a duration, auth a map of {username, password}."""
    assert set(response) <= {"apiVersion", "kind", "cacheKeyType", "cacheDuration", "auth"}
    assert response["apiVersion"] == api
    assert response["kind"] == "CredentialProviderResponse"
    assert response["cacheKeyType"] in ("Image", "Registry", "Global")
    assert GO_DURATION.fullmatch(response["cacheDuration"])
    for key, auth in response["auth"].items():
        assert isinstance(key, str) and key
        assert set(auth) == {"username", "password"}
        assert all(isinstance(v, str) for v in auth.values())


def _config(tmp: Path, body: str) -> Path:
    config = tmp / "awstoken.toml"
    config.write_text(f'[storage]\npath = "{tmp / "tokens"}"\n\n{body}')
    return config


def _request(image: str, version: str = "v1") -> str:
    return json.dumps({"apiVersion": f"{GROUP}/{version}", "kind": "CredentialProviderRequest",
                       "image": image})


FULL = ["awstoken", "kubelet-credential-provider"]
FAST = ["awstoken-kubelet-credential-provider"]


def _provide(env: dict[str, str], request: str,
             command: list[str] = FULL) -> tuple[int, dict[str, Any] | None, str]:
    got = run_door([door(command[0]), *command[1:]], env, request)
    return got.returncode, json.loads(got.stdout) if got.stdout else None, got.stderr


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_ecr_image_with_aws_unreachable(tmp_path: Path, version: str) -> None:
    pytest.importorskip("botocore")
    config = _config(tmp_path, '[tokens.ecr]\nsource = "ecr"\nregistry_id = "123456789012"\n'
                               'region = "us-east-1"\nformat = "Basic {token}"\ninterval = "6h"\n')
    store(tmp_path / "tokens", "ecr", basic("AWS", "ecr-pw"), lifetime=12 * 3600)
    code, response, err = _provide(no_aws_env(tmp_path, config), _request(f"{ECR}/team/app:1", version))
    assert code == 0, err
    assert response is not None
    _check_response_shape(response, f"{GROUP}/{version}")
    assert response["cacheKeyType"] == "Registry"
    assert response["auth"] == {ECR: {"username": "AWS", "password": "ecr-pw"}}
    # Refreshed just now, interval 6h, expiry in 12h: cache until the refresh is due (6h).
    assert 6 * 3600 - 120 <= _seconds(response["cacheDuration"]) <= 6 * 3600
    assert err == ""


def test_cache_duration_follows_the_advisory_window_and_expiry(tmp_path: Path) -> None:
    config = _config(tmp_path, '[tokens.reg]\ncommand = "false"\nbasic_user = "robot"\n'
                               'registries = ["registry.example.com:5000"]\n')
    env = no_aws_env(tmp_path, config)
    store(tmp_path / "tokens", "reg", basic("robot", "pw"), lifetime=3600)
    code, response, err = _provide(env, _request("registry.example.com:5000/team/app@sha256:" + "a" * 64))
    assert code == 0, err
    assert response is not None
    assert response["auth"] == {"registry.example.com:5000": {"username": "robot", "password": "pw"}}
    # One hour of life: the advisory window is 15 minutes, so the refresh is due in 45.
    assert 45 * 60 - 120 <= _seconds(response["cacheDuration"]) <= 45 * 60
    # A keeper that stopped: the refresh was due long ago, the token still has 10 minutes:
    # cache no longer than its expiry minus the door's margin.
    storage = FileStorage(tmp_path / "tokens")
    now = time.time()
    storage.write("reg", Token(value=basic("robot", "pw"), expires_at=now + 600,
                               refreshed_at=now - 3000, generation=2))
    storage.close()
    code, response, err = _provide(env, _request("registry.example.com:5000/team/app:2"))
    assert code == 0, err
    assert response is not None
    assert 600 - 30 - 120 <= _seconds(response["cacheDuration"]) <= 600 - 30


def test_without_a_keeper_the_first_request_fetches(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "fetched-pw", delay=0)
    config = _config(tmp_path, f'[tokens.reg]\ncommand = ["{source.script}"]\nbasic_user = "u"\n'
                               'registries = ["registry.example.com"]\n')
    env = no_aws_env(tmp_path, config)
    for _ in range(2):
        code, response, err = _provide(env, _request("registry.example.com/app:1"))
        assert code == 0, err
        assert response is not None
        assert response["auth"]["registry.example.com"]["password"] == "fetched-pw"
    assert source.count == 1


def test_misses_and_bad_requests_exit_1_with_the_reason(tmp_path: Path) -> None:
    source = CountingSource.make(tmp_path, "pw", delay=0, fail=True)
    config = _config(tmp_path, f'[tokens.reg]\ncommand = ["{source.script}"]\n'
                               'registries = ["registry.example.com"]\n')
    env = no_aws_env(tmp_path, config)
    cases = {
        _request("registry.example.com/app:1"): "not found: token 'reg'",
        _request("other.example.com/app:1"): "not found: no token",
        _request("nginx:latest"): "registry 'docker.io'",
        _request("registry.example.com.evil.net/app:1"): "not found: no token",
        "not json": "not JSON",
        json.dumps({"apiVersion": f"{GROUP}/v2", "kind": "CredentialProviderRequest",
                    "image": "registry.example.com/a"}): "unsupported apiVersion",
        json.dumps({"apiVersion": f"{GROUP}/v1", "kind": "Pod", "image": "x/y"}): "unexpected kind",
        json.dumps({"apiVersion": f"{GROUP}/v1", "kind": "CredentialProviderRequest"}): "no image",
    }
    for request, reason in cases.items():
        code, response, err = _provide(env, request)
        assert (code, response) == (1, None), request
        assert reason in err and "Traceback" not in err, (request, err)
    assert source.count == 1


def test_the_example_config_names_this_command() -> None:
    text = EXAMPLE.read_text()
    assert "kind: CredentialProviderConfig" in text
    assert "apiVersion: credentialprovider.kubelet.k8s.io/v1" in text
    assert "name: awstoken-kubelet-credential-provider" in text
    assert "matchImages:" in text and "AWSTOKEN_CONFIG" in text


def test_the_fast_script_answers_like_the_full_path(tmp_path: Path) -> None:
    config = _config(tmp_path, '[tokens.reg]\ncommand = "false"\nbasic_user = "robot"\n'
                               'registries = ["registry.example.com"]\ninterval = "1h"\n')
    env = no_aws_env(tmp_path, config)
    store(tmp_path / "tokens", "reg", basic("robot", "pw"), lifetime=7200)
    request = _request("registry.example.com/app:1", "v1beta1")
    answers = []
    for command in (FAST, FULL, FAST):  # no index yet, the full path writes it, then a hit
        code, response, err = _provide(env, request, command)
        assert code == 0, err
        assert response is not None
        _check_response_shape(response, f"{GROUP}/v1beta1")
        answers.append(response)
    assert answers[0]["auth"] == answers[1]["auth"] == answers[2]["auth"] == {
        "registry.example.com": {"username": "robot", "password": "pw"}}
    for response in answers:
        assert 3600 - 120 <= _seconds(response["cacheDuration"]) <= 3600
    hit = run_door([sys.executable, "-X", "importtime", door(FAST[0])], env, request)
    assert hit.returncode == 0 and "awstoken._config.load" not in hit.stderr
    # Bad requests and misses go the full path, which says why.
    code, response, err = _provide(env, "not json", FAST)
    assert (code, response) == (1, None) and "not JSON" in err
