"""examples/nginx/nginx.conf run by real nginx in front of a recording upstream.

The example is used as shipped, with only its ports and paths substituted (and, for the
loopback variant, its commented secret line switched on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from awstoken import Keeper, MemoryStorage
from awstoken._config.settings import ServerSettings, Settings, TokenSettings
from tests.fixtures.nginx import (
    EXAMPLES,
    Nginx,
    RecordingUpstream,
    Reply,
    RunningServer,
    base_replacements,
    recording_upstream,
    render,
    running_nginx,
    running_server,
    )
from tests.fixtures.nginx import request as http_request
from tests.fixtures.ports import free_port, unix_accepts
from tests.fixtures.wait import wait_until

# Longer than 4096 bytes (nginx's default header buffer, and its limit for a word in a
# configuration file), as ECR tokens can be.
TOKEN_A = "Basic " + "QVdTOmZpcnN0LXRva2Vu" * 350  # 7006 bytes
TOKEN_B = "Basic " + "QVdTOnNlY29uZC10b2tlbg" * 330  # 7266 bytes
SECRET = "nginx-shared-secret-4f1c"
MAX_AGE = 5.0  # server.token_max_age, as in the example's comments
REFRESH_WAIT = 0.2
# nginx stamps a cached answer with whole seconds (its cached clock, ngx_time()): an answer
# cached at t is used while that clock reads at most floor(t) + max-age, so until at most
# t + max-age + 1.
NGINX_CACHE_SPAN = MAX_AGE + 1


@dataclass
class Stack:
    nginx: Nginx
    port: int
    upstream: RecordingUpstream
    awstoken: RunningServer
    keeper: Keeper

    def get(self, path: str = "/v2/", method: str = "GET", body: bytes | None = None) -> Reply:
        # The client's own Authorization must never reach the upstream.
        return http_request(("127.0.0.1", self.port), method, path,
                       {"Authorization": "Basic Y2xpZW50OmNyZWRz"}, body)


@pytest.fixture(params=["unix", "loopback+secret"])
def stack(request: pytest.FixtureRequest, short_dir: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    variant = request.param
    keeper = Keeper(MemoryStorage())
    sock = str(short_dir / "token.sock")
    replace: dict[str, str]
    # No source here brings a token unless a test stores one: a request without a usable
    # token waits refresh_wait for it, then is refused; kept short for the tests that expect
    # the refusal (test_nginx_waits_for_the_first_token_of_a_just_started_serve waits).
    if variant == "unix":
        server = ServerSettings(admin_listen=None, token_listen=(sock,), token_max_age=MAX_AGE,
                                refresh_wait=REFRESH_WAIT)
    else:
        monkeypatch.setenv("AWSTOKEN_TEST_TOKEN_SECRET", SECRET)
        server = ServerSettings(admin_listen=None, token_listen=(("127.0.0.1", 0),),
                                token_max_age=MAX_AGE, token_secret_env="AWSTOKEN_TEST_TOKEN_SECRET",
                                refresh_wait=REFRESH_WAIT)
    settings = Settings(tokens={"ecr": TokenSettings(name="ecr")}, server=server)
    port = free_port()
    with running_server(settings, keeper) as awstoken, recording_upstream() as upstream:
        (address,) = awstoken.token_addresses
        if isinstance(address, str):
            replace = {"server unix:/run/awstoken/token.sock;": f"server unix:{address};"}
        else:
            replace = {"server unix:/run/awstoken/token.sock;": f"server {address[0]}:{address[1]};",
                       '# proxy_set_header X-Awstoken-Secret "the-secret";':
                       f'proxy_set_header X-Awstoken-Secret "{SECRET}";'}
        config = render((EXAMPLES / "nginx.conf").read_text(), {
            **base_replacements(short_dir), **replace,
            "/run/nginx-awstoken-cache": str(short_dir / "cache"),
            "listen 127.0.0.1:5000;": f"listen 127.0.0.1:{port};",
            "server 123456789012.dkr.ecr.eu-west-1.amazonaws.com:443;":
                f"server 127.0.0.1:{upstream.port};",
            "proxy_pass https://ecr;": "proxy_pass http://ecr;",
        })
        with running_nginx(short_dir, config, [port]) as nginx:
            yield Stack(nginx, port, upstream, awstoken, keeper)
            logs = nginx.error_log() + nginx.access_log()
            assert TOKEN_A not in logs and TOKEN_B not in logs
            assert "X-Awstoken-Value" not in logs
        # Whatever happened in the test: the upstream never saw a request without the
        # token, nor the client's own credentials.
        assert all(seen in (TOKEN_A, TOKEN_B) for seen in upstream.authorizations())


def test_the_upstream_receives_the_current_token_then_the_rotated_one(stack: Stack) -> None:
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    for method, body in (("GET", None), ("HEAD", None), ("POST", b"{}"), ("PATCH", b"x" * 70_000),
                         ("PUT", b"layer"), ("DELETE", None)):
        reply = stack.get("/v2/repo/blobs/uploads/", method, body)
        assert reply.status == 200, (method, reply.status, reply.body)
        seen = stack.upstream.seen[-1]
        assert (seen.method, seen.authorization) == (method, TOKEN_A)
        assert seen.body_length == len(body or b"")
        assert reply.header("X-Awstoken-Value") is None
    # nginx's cache answers most subrequests: awstoken was asked far fewer times.
    for _ in range(30):
        assert stack.get().status == 200
    assert stack.awstoken.endpoint_count("ecr", "204") <= 4
    assert len(stack.upstream.seen) == 36

    stack.keeper.manage("ecr", lambda: TOKEN_B)  # a rotation
    rotated = time.time()
    sent_with_a: list[float] = []

    def upstream_has_b() -> bool:
        sent = time.time()
        assert stack.get().status == 200
        if stack.upstream.seen[-1].authorization == TOKEN_A:
            sent_with_a.append(sent)
        return stack.upstream.seen[-1].authorization == TOKEN_B

    wait_until(upstream_has_b, MAX_AGE + 5, "the rotated token at the upstream")
    # The old token's answer was cached before the rotation, and nginx uses a cached answer
    # while its clock's whole second is at most the second it was cached in + max-age.
    assert all(sent < rotated + NGINX_CACHE_SPAN for sent in sent_with_a)
    for _ in range(5):  # and it stays
        assert stack.get().status == 200
        assert stack.upstream.seen[-1].authorization == TOKEN_B


def test_without_a_token_nginx_refuses_and_the_upstream_sees_nothing(stack: Stack) -> None:
    for method in ("GET", "HEAD", "PUT"):
        reply = stack.get("/v2/", method, b"x" if method == "PUT" else None)
        assert reply.status == 503, (method, reply.status)
        assert reply.header("Retry-After") == "5"
    assert stack.upstream.seen == []
    assert stack.awstoken.endpoint_count("ecr", "503") >= 3  # never cached
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    assert stack.get().status == 200  # at once: the 503s were not cached
    assert stack.upstream.authorizations() == [TOKEN_A]


def test_the_token_endpoint_is_not_reachable_through_nginx(stack: Stack) -> None:
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    internal = stack.get("/_awstoken/ecr")
    assert internal.status == 404
    assert stack.upstream.seen == []
    for path in ("/token/ecr", "/_awstoken/ecr/../ecr", "/_awstoken/ecr?x=1", "/_awstoken/ecr/"):
        reply = stack.get(path)
        upstream = path in ("/token/ecr", "/_awstoken/ecr/")  # ordinary registry paths
        assert reply.status == (200 if upstream else 404), path
        assert reply.header("X-Awstoken-Value") is None, path
        assert TOKEN_A.encode() not in reply.body
        assert all(TOKEN_A not in value for _, value in reply.headers)
    # Those go upstream, with the token, like any other registry path.
    assert [seen.path for seen in stack.upstream.seen] == ["/token/ecr", "/_awstoken/ecr/"]


def test_the_cache_holds_the_token_privately(stack: Stack) -> None:
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    assert stack.get().status == 200
    cache = stack.nginx.directory / "cache"
    assert cache.stat().st_mode & 0o077 == 0
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert files, "nothing was cached"
    assert all(path.stat().st_mode & 0o077 == 0 for path in files)


def test_ecr_locations_come_back_through_nginx_and_s3_redirects_pass(stack: Stack) -> None:
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    ecr = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    s3 = "https://prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com/ab/cd?X-Amz-Signature=1"
    stack.upstream.answers["/v2/repo/blobs/uploads/"] = (
        202, {"Location": f"{ecr}/v2/repo/blobs/uploads/uuid-1?_state=x"})
    stack.upstream.answers["/v2/repo/blobs/sha256:00"] = (307, {"Location": s3})
    upload = stack.get("/v2/repo/blobs/uploads/", "POST", b"")
    assert (upload.status, upload.header("Location")) == (
        202, f"http://127.0.0.1:{stack.port}/v2/repo/blobs/uploads/uuid-1?_state=x")
    blob = stack.get("/v2/repo/blobs/sha256:00")
    assert (blob.status, blob.header("Location")) == (307, s3)  # the client goes to S3 itself


def _statuses_until_refused(stack: Stack, bound: float) -> list[tuple[float, float, int]]:
    """Requests one after another until nginx answers 503 (or ``bound`` seconds pass), then a
    few more: ``(sent, answered, status)`` for each."""
    out: list[tuple[float, float, int]] = []
    deadline = time.time() + bound
    while time.time() < deadline:
        sent = time.time()
        status = stack.get().status
        out.append((sent, time.time(), status))
        if status == 503:
            break
        time.sleep(0.1)
    for _ in range(5):
        sent = time.time()
        status = stack.get().status
        out.append((sent, time.time(), status))
    return out


def test_nginx_stops_sending_the_token_soon_after_awstoken_stops(stack: Stack) -> None:
    # A cached answer is used for at most token_max_age; then nginx asks awstoken, and with
    # awstoken gone it answers 503 instead of using the cached token on and on.
    stack.keeper.manage("ecr", lambda: TOKEN_A)
    assert stack.get().status == 200
    cached = time.time()  # the last answer nginx can have cached
    stack.awstoken.loop.run(stack.awstoken.server.stop())
    seen = len(stack.upstream.seen)
    replies = _statuses_until_refused(stack, MAX_AGE + 10)
    refused = next((sent for sent, _, status in replies if status == 503), None)
    assert refused is not None, "nginx kept using the cached token"
    # Bound by nginx's cache clock, not by how fast this loop polls on a busy machine.
    assert all(sent < cached + NGINX_CACHE_SPAN for sent, _, status in replies if status == 200)
    assert all(status == 503 for sent, _, status in replies if sent >= refused)
    assert len(stack.upstream.seen) - seen == sum(1 for *_, s in replies if s == 200)


# Once, over the unix socket: what it proves (nginx follows the shrinking max-age and the
# 503 at expiry) is in awstoken's answers, whichever way nginx reaches the endpoint; it
# waits 14 s for the expiry, and the other tests cover both ways.
@pytest.mark.parametrize("stack", ["unix"], indirect=True)
def test_nginx_never_sends_the_token_after_it_expires(stack: Stack) -> None:
    # A token that expires 14 s from now and is not refreshed: awstoken's answers are cached
    # less and less long (never past expiry - margin - 10 s), then refused (503) from
    # expiry - margin on; nginx must follow, not keep its cached answer.
    from awstoken import Token

    expires = time.time() + 14
    stack.keeper.storage.write("ecr", Token(value=TOKEN_A, expires_at=expires,
                                            refreshed_at=time.time(), generation=1))
    assert stack.get().status == 200
    replies = _statuses_until_refused(stack, 20)
    refused = next((sent for sent, _, status in replies if status == 503), None)
    assert refused is not None, "nginx kept using the expired token"
    # Every request that reached the upstream (200) was answered before the expiry.
    assert all(answered < expires for _, answered, status in replies if status == 200)
    assert all(status == 503 for sent, _, status in replies if sent >= refused)


def test_nginx_waits_for_the_first_token_of_a_just_started_serve(tmp_path: Path,
                                                                 short_dir: Path) -> None:
    """`awstoken serve` listens before its first fetch ends (here a source that takes about
    2 s, with the default refresh_wait of 5 s): nginx's first request, sent as soon as the
    socket accepts, waits for the token and goes upstream with it (it was refused 503)."""
    from tests.fixtures import processes
    from tests.fixtures.cli import awstoken_cli

    raw = "QVdTOmp1c3Qtc3RhcnRlZA"
    sock = short_dir / "token.sock"
    config = tmp_path / "awstoken.toml"
    config.write_text(f"""
[storage]
type = "file"
path = "{tmp_path / 'tokens'}"

[tokens.ecr]
command = "sleep 2; echo {raw}"
format = "Basic {{token}}"

[server]
admin_listen = "off"
token_listen = "unix:{sock}"
token_max_age = "5s"
""")
    processes.issue(f"Basic {raw}", raw)
    port = free_port()
    with recording_upstream() as upstream:
        nginx_config = render((EXAMPLES / "nginx.conf").read_text(), {
            **base_replacements(short_dir / "nginx"),
            "server unix:/run/awstoken/token.sock;": f"server unix:{sock};",
            "/run/nginx-awstoken-cache": str(short_dir / "cache"),
            "listen 127.0.0.1:5000;": f"listen 127.0.0.1:{port};",
            "server 123456789012.dkr.ecr.eu-west-1.amazonaws.com:443;":
                f"server 127.0.0.1:{upstream.port};",
            "proxy_pass https://ecr;": "proxy_pass http://ecr;",
        })
        with running_nginx(short_dir / "nginx", nginx_config, [port]) as nginx:
            log = tmp_path / "serve.log"
            proc = processes.start_logged([*awstoken_cli(), "serve", "-c", str(config)], log)
            try:
                wait_until(lambda: unix_accepts(sock) or proc.poll() is not None, 30, "the socket")
                assert proc.poll() is None, log.read_text()
                reply = http_request(("127.0.0.1", port), "GET", "/v2/",
                                     {"Authorization": "Basic Y2xpZW50OmNyZWRz"})
                assert (reply.status, reply.body) == (200, b"upstream ok\n"), reply.body
            finally:
                processes.stop(proc, 30)
            assert upstream.authorizations() == [f"Basic {raw}"]
            assert raw not in nginx.error_log() + nginx.access_log() + log.read_text()


