"""A storage read that blocks (a slow or hung Redis) never stalls the proxy's other connections."""

from __future__ import annotations

import threading

from awstoken import Keeper, MemoryStorage, Token
from awstoken._settings import RouteSettings, Settings
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
    settings = Settings(routes=(
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
