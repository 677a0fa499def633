"""Command with JSON output: token_path and expiry_path."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from awstoken import Command, CommandError, ConfigError
from awstoken._sources.jsonout import lookup, parse_expiry, parse_path

SECRET = "c2VjcmV0LXRva2VuLXZhbHVl"


@pytest.fixture
def echo(tmp_path: Path) -> Callable[[object], str]:
    """Make shell commands that print a document as JSON (kept in a file, so the command
    line itself holds no secret)."""
    def make(document: object) -> str:
        path = tmp_path / "out.json"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        return "cat " + shlex.quote(str(path))
    return make


def test_paths_parse_into_keys_and_indexes() -> None:
    assert parse_path("authorizationData[0].authorizationToken") == (
        "authorizationData", 0, "authorizationToken")
    assert parse_path("a[1][-1].b-c._d") == ("a", 1, -1, "b-c", "_d")
    for bad in ["", "a..b", "a[x]", ".a", "a[0", "a b", 3]:
        with pytest.raises(ConfigError):
            parse_path(bad)


def test_lookup_says_where_it_stopped() -> None:
    doc = {"authorizationData": [{"authorizationToken": "t"}]}
    assert lookup(doc, parse_path("authorizationData[0].authorizationToken")) == "t"
    with pytest.raises(LookupError, match=r"authorizationData has 1 item\(s\), no index 1"):
        lookup(doc, parse_path("authorizationData[1].authorizationToken"))
    with pytest.raises(LookupError, match=r"authorizationData\[0\] has no key 'token'"):
        lookup(doc, parse_path("authorizationData[0].token"))
    with pytest.raises(LookupError, match="authorizationData is a list, not an object"):
        lookup(doc, parse_path("authorizationData.x"))


@pytest.mark.parametrize(("value", "epoch"), [
    (1735689600, 1735689600.0),  # AWS CLI v1: epoch seconds
    (1735689600.5, 1735689600.5),
    ("1735689600", 1735689600.0),
    ("2025-01-01T00:00:00+00:00", 1735689600.0),  # AWS CLI v2: ISO 8601
    ("2025-01-01T00:00:00Z", 1735689600.0),
    ("2025-01-01T01:00:00+01:00", 1735689600.0),
    ("2025-01-01T00:00:00.000000", 1735689600.0),  # no zone: UTC
    (1735689600000, 1735689600.0),  # milliseconds
])
def test_expiry_formats(value: object, epoch: float) -> None:
    assert parse_expiry(value) == epoch


@pytest.mark.parametrize("value", [None, True, "tomorrow", -1, 0, [1], float("inf")])
def test_bad_expiries(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_expiry(value)


def test_token_and_expiry_from_cli_v1_output(echo: Callable[[object], str]) -> None:
    doc = {"authorizationData": [{"authorizationToken": SECRET, "expiresAt": 4102444800.0,
                                  "proxyEndpoint": "https://x"}]}
    fetched = Command(echo(doc), token_path="authorizationData[0].authorizationToken",
                      expiry_path="authorizationData[0].expiresAt").fetch()
    assert fetched.token == SECRET
    assert fetched.expires_at == 4102444800.0


def test_token_and_expiry_from_cli_v2_output_with_argv() -> None:
    doc = {"authorizationToken": SECRET, "expiration": "2100-01-01T00:00:00+00:00"}
    code = f"import json; print(json.dumps({doc!r}, indent=4))"
    fetched = Command([sys.executable, "-c", code], token_path="authorizationToken",
                      expiry_path="expiration").fetch()
    assert fetched.token == SECRET
    assert fetched.expires_at == datetime.fromisoformat("2100-01-01T00:00:00+00:00").timestamp()


def test_token_path_without_expiry_path(echo: Callable[[object], str]) -> None:
    fetched = Command(echo({"t": SECRET}), token_path="t").fetch()
    assert (fetched.token, fetched.expires_at) == (SECRET, None)


@pytest.mark.parametrize(("document", "kwargs", "message"), [
    ({"t": SECRET}, {"token_path": "token"}, "token_path 'token' is not in the JSON output: "
                                             "the document has no key 'token'"),
    ({"t": [SECRET]}, {"token_path": "t"}, "token_path 't' leads to a list, not a string"),
    ({"t": SECRET}, {"token_path": "t", "expiry_path": "e"}, "expiry_path 'e' is not in the JSON"),
    ({"t": SECRET, "e": "soon"}, {"token_path": "t", "expiry_path": "e"},
     "expiry_path 'e' is not a time"),
])
def test_json_errors_never_echo_the_output(echo: Callable[[object], str], document: object,
                                           kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError) as caught:
        Command(echo(document), **kwargs).fetch()
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_output_that_is_not_json(echo: Callable[[object], str]) -> None:
    with pytest.raises(CommandError) as caught:
        Command(echo(SECRET), token_path="t").fetch()
    assert "printed output that is not JSON (error at line 1, column 1)" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_option_conflicts() -> None:
    with pytest.raises(ConfigError, match="expiry_path needs token_path"):
        Command("x", expiry_path="e")
    with pytest.raises(ConfigError, match="either parse or token_path"):
        Command("x", token_path="t", parse=lambda out: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="token_path 'a b' is not a path"):
        Command("x", token_path="a b")


def test_import_awstoken_does_not_import_botocore() -> None:
    code = ("import sys, awstoken, awstoken.aws, awstoken._config.load, awstoken._cli\n"
            "assert 'botocore' not in sys.modules, 'botocore imported'\n"
            "assert awstoken.ECR is awstoken.aws.ECR\n"
            "assert 'botocore' not in sys.modules, 'botocore imported by the lazy export'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_every_public_name_resolves() -> None:
    import awstoken

    for name in awstoken.__all__:
        assert getattr(awstoken, name) is not None
    assert {"ECR", "ECRPublic", "CodeArtifact", "EKS", "RDS"} <= set(awstoken.__all__)
    with pytest.raises(AttributeError):
        awstoken.NoSuchThing  # noqa: B018
