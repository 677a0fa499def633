"""Rotation under load: wrk through the proxy while the token rotates every second.

The upstream accepts only the current and the previous token, as AWS does for a token
that was just replaced. Every response must be 2xx, and the upstream must never have
refused a request (the proxy's refresh-and-retry would otherwise hide a stale token).

The suite runs it for 5 s; ``AWSTOKEN_SOAK_SECONDS=30`` runs the full soak (its last
result is in docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from awstoken import FileStorage, Keeper
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.binaries import require_binary
from tests.fixtures.faults import wait_until
from tests.fixtures.proxy import aiohttp_server, running_proxy

SECONDS = int(os.environ.get("AWSTOKEN_SOAK_SECONDS", "5"))


@dataclass
class Minting:
    """The token authority: mints tokens and checks them like the upstream's AWS would."""

    current: str = ""
    previous: str = ""
    minted: int = 0
    accepted: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def mint(self) -> str:
        with self.lock:
            self.minted += 1
            self.previous, self.current = self.current, f"rot-{self.minted:06d}-{os.urandom(8).hex()}"
            return self.current

    def check(self, header: str | None) -> bool:
        with self.lock:
            ok = header is not None and header.removeprefix("Bearer ") in (self.current,
                                                                            self.previous)
            if ok:
                self.accepted += 1
            else:
                self.refused += 1
            return ok


@pytest.fixture
def strict_upstream() -> Iterator[tuple[str, Minting]]:
    from aiohttp import web

    minting = Minting()

    async def handle(request: web.BaseRequest) -> web.Response:
        if not minting.check(request.headers.get("Authorization")):
            return web.Response(status=401, text="stale or missing token")
        return web.Response(body=b"layer-bytes")

    with aiohttp_server(handle) as url:
        yield url, minting


def wrk_numbers(output: str) -> dict[str, int]:
    numbers = {"requests": int(re.search(r"(\d+) requests in", output).group(1))}  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    numbers["non_2xx_3xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    numbers["socket_errors"] = sum(map(int, errors.groups())) if errors else 0
    return numbers


def test_rotation_every_second_under_wrk_load(tmp_path: Path,
                                              strict_upstream: tuple[str, Minting]) -> None:
    wrk = require_binary("wrk")
    url, minting = strict_upstream
    storage = FileStorage(tmp_path / "store")
    keeper = Keeper(storage)
    settings = Settings(server=ServerSettings(admin_listen=None, access_log=False),
                        routes=(RouteSettings(prefix="/v2", upstream=url, token="ecr"),))
    try:
        with running_proxy(settings, keeper) as proxy:
            rotator = keeper.rotate("ecr", minting.mint, "Bearer {token}", interval=1.0)
            assert wait_until(lambda: keeper.token("ecr") is not None)
            run = subprocess.run(
                [wrk, "-t2", "-c16", f"-d{SECONDS}s", "--timeout", "5s",
                 f"{proxy.url}/v2/library/app/blobs/sha256:00"],
                capture_output=True, text=True, timeout=SECONDS + 30, check=True)
            refreshes = rotator.refreshes
    finally:
        keeper.stop()
        storage.close()
    numbers = wrk_numbers(run.stdout)
    print(f"\nwrk {SECONDS}s: {numbers}, rotations {refreshes}, upstream accepted "
          f"{minting.accepted} refused {minting.refused}")
    assert numbers["requests"] > 100, run.stdout
    assert numbers["non_2xx_3xx"] == 0, run.stdout
    assert numbers["socket_errors"] == 0, run.stdout
    assert minting.refused == 0
    assert refreshes >= SECONDS - 1  # it really rotated about once a second
