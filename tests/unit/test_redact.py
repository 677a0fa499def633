"""``redact_url``: no part of a URL's credentials survives, whatever characters they hold."""

from __future__ import annotations

import pytest

from awstoken._redact import redact_url, url_has_password


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@host:6379/0", "redis://***@host:6379/0"),
    ("rediss://user:s3cret@host/1", "rediss://***@host/1"),
    ("redis://:pa/ss@host:6379/0", "redis://***@host:6379/0"),
    ("redis://:pa?ss#w@rd@host/0", "redis://***@host/0"),
    ("unix://:s3cret@/run/redis.sock?db=2", "unix://***@/run/redis.sock?db=2"),
    ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
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
