"""Inbound authentication compares secrets in constant time.

Timing is not measured (a noisy shared host makes such assertions flaky); instead these
tests check the properties that make the time independent of the secret: every bearer
token is compared with ``hmac.compare_digest`` whichever matches, and an unknown user
costs the same bcrypt check as a known one.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from pathlib import Path

import pytest

pytest.importorskip("bcrypt")

import bcrypt

from awstoken._config.settings import ServerSettings
from awstoken.proxy._auth import InboundAuth


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_every_bearer_token_is_compared_in_constant_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOUND", "first-token,second-token,third-token")
    auth = InboundAuth(ServerSettings(bearer_tokens_env="INBOUND"))
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for header, allowed in [("Bearer first-token", True), ("Bearer third-token", True),
                            ("Bearer wrong-token", False), ("Bearer first-tokeN", False)]:
        calls.clear()
        decision = asyncio.run(auth.check("127.0.0.1", header))
        assert decision.allowed is allowed
        assert len(calls) == 3  # no early exit on the first match
    assert asyncio.run(auth.check("127.0.0.1", "Basic Zm9vOmJhcg==")).status == 401
    assert asyncio.run(auth.check("127.0.0.1", None)).status == 401


def test_an_unknown_user_costs_one_bcrypt_check_like_a_known_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "htpasswd"
    digest = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    path.write_text(f"ci:{digest}\n")
    auth = InboundAuth(ServerSettings(htpasswd=str(path)))
    checks: list[bytes] = []
    checkpw = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        checks.append(hashed)
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    for header, allowed in [(basic("ci", "wrong"), False), (basic("nobody", "right"), False),
                            (basic("ci", "right"), True)]:
        checks.clear()
        decision = asyncio.run(auth.check("127.0.0.1", header))
        assert decision.allowed is allowed
        assert len(checks) == 1, header
    # The unknown user was checked against a dummy hash of the same cost.
    checks.clear()
    asyncio.run(auth.check("127.0.0.1", basic("nobody", "x")))
    assert checks[0] != digest.encode() and checks[0][:7] == digest.encode()[:7]
