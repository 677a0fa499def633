"""The shared token wait of a proxy process (:class:`TokenRefresher`), on its own loop."""

from __future__ import annotations

import asyncio

from awstoken import MemoryStorage
from awstoken._rotation.keeper import Keeper
from awstoken.proxy._policy import TokenRefresher


def test_close_returns_once_the_waits_in_flight_have_ended() -> None:
    # A server's stop awaits close(): when it returns, no wait may be left in flight or as a
    # task (CI once saw waiting() still true just after a stop, when close only cancelled).
    async def scenario() -> None:
        refresher = TokenRefresher(Keeper(MemoryStorage()), wait=300)  # nothing ends the wait
        callers = [asyncio.ensure_future(refresher.usable("ecr")) for _ in range(3)]
        while not refresher.waiting("ecr"):
            await asyncio.sleep(0.01)
        for caller in callers[:2]:  # two clients left: the shared wait goes on for the third
            caller.cancel()
        await asyncio.sleep(0.05)
        assert refresher.waiting("ecr")
        await refresher.close()
        assert not refresher.waiting("ecr")
        await asyncio.gather(*callers, return_exceptions=True)
        assert all(caller.cancelled() for caller in callers)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())
