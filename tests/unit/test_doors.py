"""The doors' shared logic: which token answers for a host or URL, and the credentials in it."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from awstoken import ConfigError, MemoryStorage, Token
from awstoken._config.load import loads
from awstoken._config.options import CodeArtifactOptions, ECROptions
from awstoken._config.settings import TokenSettings
from awstoken._doors.common import (
    NotFound,
    credentials,
    index_token,
    indexes,
    obtain,
    registries,
    registry_host,
    registry_token,
)

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_registry_host_normalises_what_tools_send() -> None:
    assert registry_host(ECR) == ECR
    assert registry_host(f"https://{ECR}/v2/") == ECR
    assert registry_host("https://index.docker.io/v1/") == "index.docker.io"
    assert registry_host("Registry.Example:5000") == "registry.example:5000"
    assert registry_host("https://registry.example:443") == "registry.example"


def test_registries_from_keys_ecr_sources_and_routes() -> None:
    settings = loads(
        '[tokens.a]\ncommand = "x"\nregistries = ["Registry.Example:5000"]\n'
        '[tokens.b]\ncommand = "y"\nformat = "Basic {token}"\n'
        f'[[routes]]\nprefix = "/"\nupstream = "https://{ECR}"\ntoken = "b"\n'
        '[[routes]]\nprefix = "/pypi"\nupstream = "https://pypi.example"\ntoken = "a"\n')
    # A route to a non-ECR host with a command token implies nothing (it may be a package index).
    assert registries(settings) == {"registry.example:5000": "a", ECR: "b"}
    assert registry_token(settings, f"https://{ECR}") == "b"
    with pytest.raises(NotFound, match="no token"):
        registry_token(settings, "registry.example")


def test_ecr_source_with_account_and_region_implies_its_host() -> None:
    pytest.importorskip("botocore")
    settings = loads('[tokens.e]\nsource = "ecr"\nregistry_id = "123456789012"\nregion = "us-east-1"\n')
    assert registries(settings) == {ECR: "e"}


def test_codeartifact_source_with_owner_and_region_implies_its_index() -> None:
    pytest.importorskip("botocore")
    settings = loads('[tokens.c]\nsource = "codeartifact"\ndomain = "acme"\n'
                     'domain_owner = "111122223333"\nregion = "eu-west-1"\n'
                     'indexes = ["https://pypi.example/simple/"]\n'
                     '[tokens.n]\nsource = "codeartifact"\ndomain = "acme"\n')
    assert indexes(settings) == [
        ("https://pypi.example/simple/", "c"),
        ("https://acme-111122223333.d.codeartifact.eu-west-1.amazonaws.com/", "c")]


@pytest.mark.parametrize("value", [f"Basic {_b64('AWS:pw=:x')}", _b64("AWS:pw=:x")])
def test_ecr_values_split_into_user_and_password(value: str) -> None:
    assert credentials(value, TokenSettings(name="e", options=ECROptions())) == ("AWS", "pw=:x")


def test_other_values() -> None:
    token = TokenSettings(name="c", options=CodeArtifactOptions(domain="d"), basic_user="aws")
    assert credentials(f"Basic {_b64('aws:tok')}", token) == ("aws", "tok")
    assert credentials("Bearer tok", token) == ("aws", "tok")
    assert credentials("plain", TokenSettings(name="p")) == ("aws", "plain")
    # A raw value that happens to be base64 is not split unless the source is ECR.
    assert credentials(_b64("a:b"), TokenSettings(name="p")) == ("aws", _b64("a:b"))


def test_index_matching_by_prefix_then_host_and_look_alikes() -> None:
    settings = loads('[tokens.a]\ncommand = "x"\nindexes = ["https://pypi.example/simple/"]\n'
                     '[tokens.b]\ncommand = "y"\nindexes = ["https://pypi.example/simple/team/"]\n'
                     '[tokens.c]\ncommand = "z"\nindexes = ["http://127.0.0.1:8080/"]\n')
    assert index_token(settings, "https://pypi.example/simple/") == "a"
    assert index_token(settings, "https://pypi.example/simple/requests/") == "a"
    assert index_token(settings, "https://pypi.example/simple/team/x/") == "b"
    assert index_token(settings, "https://pypi.example/upload/") == "a"  # same host
    assert index_token(settings, "pypi.example") == "a"  # bare host, as pip asks too
    assert index_token(settings, "127.0.0.1:8080") == "c"
    assert index_token(settings, "http://127.0.0.1:8080/simple/") == "c"
    assert index_token(settings, "http://aws@127.0.0.1:8080/simple/") == "c"  # user only
    for other in ("https://pypi.example.evil/simple/", "http://pypi.example/simple/",
                  "https://pypi.example:8443/simple/", "https://evil/pypi.example/simple/",
                  "https://user:pw@pypi.example/simple/", "http://127.0.0.1:8081/",
                  "ftp://pypi.example/simple/", "", "not a url"):
        assert index_token(settings, other) is None, other


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"tokens\.a\.registries: .*'https://x/' is not a host"):
        loads('[tokens.a]\ncommand = "x"\nregistries = ["https://x/"]\n')
    with pytest.raises(ConfigError, match=r"tokens\.a\.indexes: .*credentials"):
        loads('[tokens.a]\ncommand = "x"\nindexes = ["https://u:p@x/"]\n')
    with pytest.raises(ConfigError, match=r"tokens\.a\.indexes: expected an array"):
        loads('[tokens.a]\ncommand = "x"\nindexes = "https://x/"\n')


def test_obtain_fetches_once_as_leader_then_reads(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    settings = loads(f'[tokens.a]\ncommand = ["sh", "-c", "echo x >> {counter}; echo tok"]\n')
    storage = MemoryStorage()
    first = obtain(settings, "a", storage=storage)
    second = obtain(settings, "a", storage=storage)
    assert (first.value, first.fetched_here, second.fetched_here) == ("tok", True, False)
    assert counter.read_text() == "x\n"


def test_obtain_refetches_a_token_inside_its_margin(tmp_path: Path) -> None:
    settings = loads('[tokens.a]\ncommand = "echo fresh"\n')
    storage = MemoryStorage()
    now = time.time()
    storage.write("a", Token(value="old", expires_at=now + 10, refreshed_at=now - 3000,
                             generation=1))
    assert obtain(settings, "a", storage=storage).value == "fresh"


def test_obtain_reports_the_failure_and_keeps_backoff(tmp_path: Path) -> None:
    settings = loads('[tokens.a]\ncommand = ["sh", "-c", "echo denied >&2; exit 2"]\n')
    storage = MemoryStorage()
    with pytest.raises(NotFound, match=r"denied.*failure 1 in a row"):
        obtain(settings, "a", storage=storage)
    with pytest.raises(NotFound, match="failure 1 in a row"):
        obtain(settings, "a", storage=storage)  # backed off: no second run


def test_kubelet_helpers() -> None:
    from awstoken._doors.fast import image_registry
    from awstoken._duration import go_duration

    assert [go_duration(s) for s in (0, -5, 59.9, 60, 3599, 3600, 20700)] == [
        "0s", "0s", "59s", "1m0s", "59m59s", "1h0m0s", "5h45m0s"]
    assert image_registry(f"{ECR}/team/app:1") == ECR
    assert image_registry("Registry.Example:5000/a/b@sha256:00") == "registry.example:5000"
    assert image_registry("localhost/app") == "localhost"
    assert image_registry("nginx") == image_registry("library/nginx:1") == "docker.io"


@pytest.mark.parametrize(("refreshed", "expires", "interval"), [
    (1000.0, None, 3600.0), (1000.0, 1000.0 + 43200, 21600.0), (1000.0, 1000.0 + 900, 21600.0),
    (1000.0, 1000.0 + 3600, 600.0), (1000.0, 900.0, 60.0)])
def test_the_fast_paths_refresh_due_is_the_schedules(refreshed: float, expires: float | None,
                                                      interval: float) -> None:
    from awstoken import Schedule
    from awstoken._doors.fast import refresh_due

    record = Token(value="v", expires_at=expires, refreshed_at=refreshed)
    assert refresh_due(refreshed, expires, interval) == Schedule(interval=interval).refresh_due(record)
