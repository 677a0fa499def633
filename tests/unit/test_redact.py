"""``redact_url``: no part of a URL's credentials survives, whatever characters they hold."""

from __future__ import annotations

import pytest

from awstoken._redact import redact_url, url_has_password, url_secrets


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://user:s3cret@host/1", "rediss://***@host/1"),
    ("redis://:pa/ss@host:6379/0", "redis://***@host:6379/0"),
    ("redis://:pa?ss#w@rd@host/0", "redis://***@host/0"),
    ("unix://:s3cret@/run/redis.sock?db=2", "unix://***@/run/redis.sock?db=2"),
    ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    # Once the Redis storage's own redaction, which showed the user name and parsed the URL:
    # the whole userinfo goes now, and any secret-looking query name.
    ("rediss://s3cret@host", "rediss://***@host"),
    ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
    ("unix:///run/redis.sock?password=s3cret&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("redis://host/0?auth_token=s3cret;db=1", "redis://host/0?auth_token=***;db=1"),
    ("redis://host/0?password=s3#cret&db=1", "redis://host/0?password=***&db=1"),
    # No scheme: the userinfo is hidden all the same.
    ("user:s3cret@host:6379", "***@host:6379"),
])
def test_credentials_are_replaced(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for part in ("s3cret", "pa/ss", "w@rd", "user"):
        assert part not in redact_url(url)


@pytest.mark.parametrize(("url", "has"), [
    ("redis://:s3cret@host/0", True), ("redis://user:pw@host/0", True),
    ("redis://user@host/0", False), ("redis://host/0", False),
    ("redis://host/0?password=x", True), ("rediss://host/0?ssl_cert_reqs=none", False),
])
def test_url_has_password(url: str, has: bool) -> None:
    assert url_has_password(url) is has


def test_url_secrets_include_what_a_parser_makes_of_the_password() -> None:
    found = url_secrets("redis://user:pa/ss@host/0?password=q-s3cret&db=1")
    assert {"user:pa/ss", "pa/ss", "q-s3cret"} <= set(found)
    assert found == sorted(found, key=len, reverse=True)
