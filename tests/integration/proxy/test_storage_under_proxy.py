"""The storage directory removed, replaced by a file, or made read-only while the proxy serves.

Every request keeps getting a token (the one in memory), the errors are clear one-line log
entries, the source is not run in a loop, and the storage is used again once it is back.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from awstoken import FileStorage, Keeper
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from tests.fixtures.faults import read_only, wait_until
from tests.fixtures.proxy import RunningProxy, Upstream, running_proxy

from .conftest import call


@dataclass
class Serving:
    directory: Path
    keeper: Keeper
    proxy: RunningProxy
    upstream: Upstream
    issued: list[str] = field(default_factory=list)

    def hammer(self, seconds: float) -> None:
        """Requests for ``seconds``: each is answered 200 and carries an issued token."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen = len(self.upstream.seen)
            assert call(self.proxy.url, "GET", "/v2/x").status == 200
            headers = {k.lower(): v for k, v in self.upstream.seen[seen]["headers"]}
            assert headers["authorization"].removeprefix("Bearer ") in self.issued
            time.sleep(0.02)


@pytest.fixture
def serving(tmp_path: Path, upstream: Upstream) -> Iterator[Serving]:
    directory = tmp_path / "store"
    storage = FileStorage(directory, poll=0.2)
    keeper = Keeper(storage)
    settings = Settings(server=ServerSettings(admin_listen=None),
                        routes=(RouteSettings(prefix="/v2", upstream=upstream.url, token="ecr"),))
    try:
        with running_proxy(settings, keeper) as proxy:
            state = Serving(directory, keeper, proxy, upstream)

            def source() -> str:
                state.issued.append("tok-" + os.urandom(12).hex())
                return state.issued[-1]

            keeper.rotate("ecr", source, "Bearer {token}", interval=0.5, retry=0.2)
            assert wait_until(lambda: keeper.token("ecr") is not None)
            # In memory first, then on disk: wait for the disk, or a test that makes the
            # directory read-only at once could catch the first write in the middle.
            assert wait_until(lambda: stored_value(directory) is not None)
            yield state
    finally:
        keeper.stop()
        storage.close()


def stored_value(directory: Path) -> str | None:
    other = FileStorage(directory)
    try:
        record = other.read("ecr")
        return None if record is None else record.value
    finally:
        other.close()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records
                if r.name.startswith("awstoken") and r.exc_info]


def test_directory_removed_while_serving(serving: Serving,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="awstoken")
    before = len(serving.issued)
    shutil.rmtree(serving.directory)
    serving.hammer(1.5)
    # Made again, private, and written to by the next refresh.
    assert wait_until(lambda: (serving.directory / "ecr.json").exists())
    assert stat.S_IMODE(serving.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((serving.directory / "ecr.json").stat().st_mode) == 0o600
    assert wait_until(lambda: stored_value(serving.directory) == serving.keeper.token("ecr"))
    assert len(serving.issued) > before
    no_tracebacks(caplog)


def test_directory_replaced_by_a_file_while_serving(serving: Serving,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="awstoken")
    shutil.rmtree(serving.directory)
    serving.directory.write_text("not a directory")
    issued = len(serving.issued)
    serving.hammer(2.0)
    # The lease went with the directory: no refresh loop, a few attempts at most.
    assert len(serving.issued) - issued <= 2
    errors = [r.getMessage() for r in caplog.records
              if r.name == "awstoken" and r.levelno >= logging.WARNING]
    assert any("Not a directory" in m and str(serving.directory) in m for m in errors), errors
    # One line per distinct problem from the cache thread, not one per poll.
    revalidate = [m for m in errors if "could not revalidate" in m]
    assert len(revalidate) <= 1, revalidate
    no_tracebacks(caplog)
    serving.directory.unlink()
    assert wait_until(lambda: stored_value(serving.directory) is not None)
    assert wait_until(lambda: stored_value(serving.directory) == serving.keeper.token("ecr"))
    serving.hammer(0.3)


def test_directory_made_read_only_while_serving(serving: Serving,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="awstoken")
    with read_only(serving.directory) as how:
        issued = len(serving.issued)
        started = time.monotonic()
        serving.hammer(2.0)
        elapsed = time.monotonic() - started
        # Refreshed on schedule (every 0.5 s) into memory, not in a loop.
        fresh = len(serving.issued) - issued
        assert 1 <= fresh <= elapsed / 0.5 + 2, (fresh, how)
        on_disk = stored_value(serving.directory)
        assert on_disk is not None and serving.keeper.token("ecr") != on_disk
        # The new tokens reached the upstream even though they could not be stored (compared
        # with what was issued meanwhile: a rotation may land between the request and here).
        last = {k.lower(): v for k, v in serving.upstream.seen[-1]["headers"]}
        assert last["authorization"].removeprefix("Bearer ") in serving.issued[issued:]
        assert last["authorization"] != on_disk
    messages = [r.getMessage() for r in caplog.records if r.name == "awstoken"]
    assert any("could not store the record (serving it from memory)" in m and
               ("Operation not permitted" in m or "Permission denied" in m)
               for m in messages), messages
    no_tracebacks(caplog)
    # Writable again: the next refresh is stored.
    assert wait_until(lambda: stored_value(serving.directory) == serving.keeper.token("ecr"))
