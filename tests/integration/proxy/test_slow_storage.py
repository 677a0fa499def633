"""A storage read that blocks (a slow or hung Redis) never stalls the proxy's other connections."""

from __future__ import annotations

import threading
from pathlib import Path

from awstoken import Keeper, MemoryStorage, Token
from awstoken._config.settings import RouteSettings, ServerSettings, Settings, TokenSettings
from tests.fixtures.nginx import request, running_server
from tests.fixtures.proxy import Upstream, running_proxy

from .conftest import Reply, call


class _SlowStorage(MemoryStorage):
    """Reads of ``slow`` from the backing store block until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _load(self, name: str) -> Token | None:
        if name == "slow":
            self.entered.set()
            self.gate.wait(60)
        return super()._load(name)


def test_a_blocked_storage_read_leaves_other_routes_served(upstream: Upstream) -> None:
    storage = _SlowStorage()
    storage.write("fast", Token(value="Bearer fast-token", expires_at=4e9))
    keeper = Keeper(storage)
    # Once the read returns, the slow request waits refresh_wait (5 s by default) for a token
    # that never comes, then answers 503: the wait is not what this test is about.
    settings = Settings(server=ServerSettings(refresh_wait=0.1), routes=(
        RouteSettings(prefix="/slow/", upstream=upstream.url, token="slow"),
        RouteSettings(prefix="/", upstream=upstream.url, token="fast")))
    slow: list[Reply] = []
    with running_proxy(settings, keeper, uvloop=True) as proxy:
        waiting = threading.Thread(target=lambda: slow.append(call(proxy.url, "GET", "/slow/x")))
        waiting.start()
        try:
            assert storage.entered.wait(30)  # the slow request is inside the storage read
            # A request on another route completes while the slow one is still pending: the
            # read is not holding the event loop.
            assert call(proxy.url, "GET", "/echo", timeout=15).status == 200
            assert not slow
        finally:
            storage.gate.set()
            waiting.join(30)
    assert [r.status for r in slow] == [503]
    assert b"token 'slow' is not available yet" in slow[0].body


def test_a_blocked_storage_read_leaves_the_token_endpoint_serving(short_dir: Path) -> None:
    # The nginx auth_request endpoint shares the event loop: a blocked read of one token
    # (never cached here) must not hold up the answer for another.
    storage = _SlowStorage()
    storage.write("fast", Token(value="Bearer fast-token", expires_at=4e9))
    keeper = Keeper(storage)
    sock = str(short_dir / "token.sock")
    settings = Settings(tokens={"fast": TokenSettings(name="fast"),
                                "slow": TokenSettings(name="slow")},
                        # After the read, the wait for a refresh that never comes (5 s by
                        # default) only delays the 503: see the other test above.
                        server=ServerSettings(admin_listen=None, token_listen=(sock,),
                                              refresh_wait=0.1))
    slow: list[int] = []
    with running_server(settings, keeper):
        # First answer for "fast": its record (for the max-age) is read and remembered. A
        # record read while "slow" blocks would wait: BaseStorage holds its lock during a
        # backing-store read (a storage matter, not the event loop's).
        assert request(sock, "GET", "/token/fast").status == 204
        waiting = threading.Thread(
            target=lambda: slow.append(request(sock, "GET", "/token/slow").status))
        waiting.start()
        try:
            assert storage.entered.wait(30)
            fast = request(sock, "GET", "/token/fast")
            assert (fast.status, fast.header("X-Awstoken-Value")) == (204, "Bearer fast-token")
            assert not slow
        finally:
            storage.gate.set()
            waiting.join(30)
    assert slow == [503]
