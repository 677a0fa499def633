"""Every kind of source failure, through a running rotator and the proxy in front of it.

The old token keeps being served until it expires, the failures and the backoff show in
/metrics, each failure is one clear log line without the token, and recovery is automatic.
After expiry the proxy answers 503 with a reason; it never sends a stale or missing header.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from awstoken import Command, Keeper, MemoryStorage
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.aws_standins import StandIn
from tests.fixtures.faults import process_alive, wait_until, zombie_children
from tests.fixtures.proxy import RunningProxy, Upstream, running_proxy

from .conftest import call

# A token command whose behaviour the test switches by writing <state>/mode.
SOURCE = r"""
import json, os, subprocess, sys, time
state = sys.argv[1]
mode = open(os.path.join(state, "mode")).read().strip()
out = sys.stdout.buffer
if mode == "ok":
    lifetime = float(open(os.path.join(state, "lifetime")).read())
    token = "tok-" + os.urandom(16).hex()
    open(os.path.join(state, "last"), "w").write(token)
    out.write(json.dumps({"token": token, "expires": time.time() + lifetime}).encode())
elif mode == "quote":
    last = open(os.path.join(state, "last")).read()
    sys.stderr.write(f"denied: the registry refused Bearer {last}\n")
    sys.exit(3)
elif mode == "exit":
    sys.stderr.write("An error occurred (AccessDenied): not allowed\n")
    sys.exit(3)
elif mode == "hang":
    child = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(state, "pids"), "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    time.sleep(300)
elif mode == "garbage":
    out.write(b"<html><body>502 Bad Gateway</body></html>")
elif mode == "empty":
    pass
elif mode == "crlf":
    out.write(json.dumps({"token": "tok-abc\r\nX-Injected: 1", "expires": time.time() + 60}).encode())
elif mode == "big":
    out.write(json.dumps({"token": "A" * 65536, "expires": time.time() + 60}).encode())
elif mode == "nonutf8":
    out.write(b'{"token": "tok-\xff\xfe", "expires": 1}')
"""

#: mode -> what the log line (and the stored error) says.
FAILURES = {
    "exit": r"exited with status 3: An error occurred \(AccessDenied\)",
    # stderr quoting the live token: masked in the log, /readyz and the record (issue 10)
    "quote": r"exited with status 3: denied: the registry refused \*\*\*",
    "hang": r"ran past its timeout of 1s and was killed",
    "garbage": r"printed output that is not JSON",
    "empty": r"printed nothing",
    "crlf": r"contains a control character \(0x0d\)",
    "big": r"65536 characters long, over the limit",
    "nonutf8": r"printed output that is not UTF-8",
}


class Flaky:
    """The switchable command source and the values it issued."""

    def __init__(self, tmp_path: Path, lifetime: float = 3600.0) -> None:
        self.state = tmp_path / "source"
        self.state.mkdir()
        script = tmp_path / "source.py"
        script.write_text(SOURCE)
        self.set("ok")
        (self.state / "lifetime").write_text(str(lifetime))
        self.command = Command([sys.executable, str(script), str(self.state)], timeout=1.0,
                               token_path="token", expiry_path="expires")

    def set(self, mode: str) -> None:
        (self.state / "mode").write_text(mode)


def metric(admin_url: str, name: str, token: str = "ecr") -> float | None:  # noqa: S107
    text = call(admin_url, "GET", "/metrics").body.decode()
    match = re.search(rf'^{name}{{token="{token}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def seen_tokens(upstream: Upstream) -> list[str | None]:
    return [{k.lower(): v for k, v in s["headers"]}.get("authorization")
            for s in upstream.seen]


@pytest.fixture
def serving(upstream: Upstream) -> Iterator[tuple[Keeper, RunningProxy]]:
    keeper = Keeper(MemoryStorage())
    settings = Settings(server=ServerSettings(admin_listen=("127.0.0.1", 0)),
                        routes=(RouteSettings(prefix="/v2", upstream=upstream.url, token="ecr"),))
    try:
        with running_proxy(settings, keeper) as proxy:
            yield keeper, proxy
    finally:
        keeper.stop()


def start(keeper: Keeper, flaky: Flaky, *, interval: float) -> None:
    rotator = keeper.rotate("ecr", flaky.command, "Bearer {token}", interval=interval,
                            retry=0.2)
    # Short backoff cap and poll so several failures fit in a test of seconds.
    rotator.schedule = replace(rotator.schedule, max_retry=1.0, poll=0.1)
    assert wait_until(lambda: keeper.token("ecr") is not None)


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_a_failing_source_keeps_the_old_token_and_says_why(
        mode: str, tmp_path: Path, serving: tuple[Keeper, RunningProxy], upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    keeper, proxy = serving
    assert proxy.admin_url is not None
    flaky = Flaky(tmp_path)
    start(keeper, flaky, interval=0.3)
    good = keeper.token("ecr")
    assert good is not None
    caplog.set_level(logging.WARNING, logger="awstoken")
    flaky.set(mode)

    def failures() -> int:
        record = keeper.record("ecr")
        return record.failures if record is not None else 0

    assert wait_until(lambda: failures() >= 2, timeout=15)
    # The last good token is still on every forwarded request.
    reply = call(proxy.url, "GET", "/v2/x")
    assert reply.status == 200
    assert seen_tokens(upstream)[-1] == good
    # Failures, their count and the backoff are visible to monitoring.
    assert (metric(proxy.admin_url, "awstoken_token_consecutive_failures") or 0) >= 2
    assert (metric(proxy.admin_url, "awstoken_token_refresh_failures_total") or 0) >= 2
    assert metric(proxy.admin_url, "awstoken_token_usable") == 1.0
    assert metric(proxy.admin_url, "awstoken_token_last_failure_timestamp_seconds") is not None
    backoff = metric(proxy.admin_url, "awstoken_token_next_refresh_seconds")
    assert backoff is not None and 0.0 <= backoff <= 1.5
    # One clear line per failure: token name and cause, no traceback, no token.
    lines = [r for r in caplog.records if r.name == "awstoken" and "failure" in r.getMessage()]
    assert lines
    for record in lines:
        message = record.getMessage()
        assert re.search(r"^awstoken: token 'ecr'[ (a-z)]*: .*" + FAILURES[mode], message), message
        assert "keeping the previous token" in message
        assert record.exc_info is None
        assert good.split()[1] not in message
    ready = call(proxy.admin_url, "GET", "/readyz").body.decode()
    assert good.split()[1] not in ready
    if mode == "quote":
        assert "refused ***" in ready, ready
    if mode == "hang":
        script_pid, child_pid = map(int, (flaky.state / "pids").read_text().split())
        # The command's whole process group is gone and nothing is left unreaped.
        assert wait_until(lambda: not process_alive(child_pid), timeout=5)
        assert not process_alive(script_pid)
        assert script_pid not in zombie_children()
    assert zombie_children() == []
    # Recovery: the next attempt after the source works again brings a new token.
    flaky.set("ok")
    assert wait_until(lambda: keeper.token("ecr") not in (None, good), timeout=10)
    assert wait_until(lambda: failures() == 0)
    assert metric(proxy.admin_url, "awstoken_token_consecutive_failures") == 0.0
    assert call(proxy.url, "GET", "/v2/x").status == 200
    assert seen_tokens(upstream)[-1] == keeper.token("ecr")


def test_expiry_while_the_source_fails_is_503_with_a_reason_then_recovers(
        tmp_path: Path, serving: tuple[Keeper, RunningProxy], upstream: Upstream) -> None:
    keeper, proxy = serving
    assert proxy.admin_url is not None
    flaky = Flaky(tmp_path, lifetime=3.0)
    start(keeper, flaky, interval=3600.0)
    good = keeper.token("ecr")
    record = keeper.record("ecr")
    assert good is not None and record is not None and record.expires_at is not None
    flaky.set("exit")
    expires_at = record.expires_at
    statuses = []
    while time.time() < expires_at + 1.0:
        reply = call(proxy.url, "GET", "/v2/x")
        statuses.append(reply.status)
        if reply.status == 503:
            # Docker registry JSON under /v2, naming the token and why.
            message = json.loads(reply.body)["errors"][0]["message"]
            # With the last refresh error once one is recorded (never the token).
            assert message.startswith("token 'ecr' has expired and could not be refreshed yet")
            assert "(refresh failed" not in message or "AccessDenied" in message
        time.sleep(0.05)
    assert statuses[0] == 200 and statuses[-1] == 503
    # Never a stale token after it left service, never a request without one.
    first_503 = statuses.index(503)
    assert 200 not in statuses[first_503:]
    forwarded = seen_tokens(upstream)
    assert len(forwarded) == first_503
    assert set(forwarded) == {good}
    assert metric(proxy.admin_url, "awstoken_token_usable") == 0.0
    readyz = call(proxy.admin_url, "GET", "/readyz")
    assert readyz.status == 503
    assert "AccessDenied" in json.loads(readyz.body)["tokens"]["ecr"]["error"]
    flaky.set("ok")
    assert wait_until(lambda: keeper.token("ecr") is not None, timeout=10)
    reply = call(proxy.url, "GET", "/v2/x")
    assert reply.status == 200
    assert seen_tokens(upstream)[-1] not in (None, good)
    assert call(proxy.admin_url, "GET", "/readyz").status == 200


@pytest.mark.usefixtures("use_aws_env")
def test_aws_throttling_keeps_the_token_and_backs_off(
        codeartifact: StandIn, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    from awstoken import basic_auth
    from awstoken.aws import CodeArtifact

    keeper = Keeper(MemoryStorage())
    settings = Settings(server=ServerSettings(admin_listen=("127.0.0.1", 0)),
                        routes=(RouteSettings(prefix="/pypi", upstream=upstream.url,
                                              token="pypi"),))
    try:
        with running_proxy(settings, keeper) as proxy:
            assert proxy.admin_url is not None
            rotator = keeper.rotate("pypi", CodeArtifact("my-domain"), basic_auth("aws"),
                                    interval=0.3, retry=0.2)
            rotator.schedule = replace(rotator.schedule, max_retry=1.0, poll=0.1)
            assert wait_until(lambda: keeper.token("pypi") is not None)
            good = keeper.token("pypi")
            caplog.set_level(logging.WARNING, logger="awstoken")
            codeartifact.mode = "throttle"
            calls = len(codeartifact.received)
            assert wait_until(lambda: (r := keeper.record("pypi")) is not None and
                              r.failures >= 3, timeout=15)
            record = keeper.record("pypi")
            assert record is not None and record.error is not None
            assert "ThrottlingException" in record.error
            # Backoff: 0.2 s, 0.4 s, 0.8 s (+ jitter) between calls, not a call per poll.
            assert len(codeartifact.received) - calls <= 6
            assert call(proxy.url, "GET", "/pypi/simple/").status == 200
            auth = {k.lower(): v for k, v in upstream.seen[-1]["headers"]}
            assert auth["authorization"] == good
            assert (metric(proxy.admin_url, "awstoken_token_consecutive_failures", "pypi")
                    or 0) >= 3
            assert metric(proxy.admin_url, "awstoken_token_next_refresh_seconds",
                          "pypi") is not None
            messages = [r.getMessage() for r in caplog.records if r.name == "awstoken"]
            assert any("ThrottlingException" in m and "keeping the previous token" in m
                       for m in messages), messages
            assert not any(codeartifact.token in m for m in messages)
            codeartifact.mode = "ok"
            assert wait_until(lambda: (r := keeper.record("pypi")) is not None and
                              r.failures == 0, timeout=10)
    finally:
        keeper.stop()
