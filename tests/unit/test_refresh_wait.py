"""RefreshWait, the bounded wait of a request for a usable token, against a real storage."""

from __future__ import annotations

import time

import pytest

from awstoken import MemoryStorage, Token
from awstoken._rotation.keeper import Keeper
from awstoken._rotation.refusal import NO_TOKEN, RefreshWait

VALUE = "Basic QVdTOmFsbW9zdC1leHBpcmVk"


@pytest.mark.parametrize(("left", "handed_out"), [(1.5, False), (2.5, True)])
def test_a_wait_hands_out_only_what_the_storage_would(left: float, handed_out: bool) -> None:
    # With a 2 s margin the storage's own reads stop handing the value out 2 s before its
    # expiry; a request that waited must not get it either (it would expire on its way).
    storage = MemoryStorage(margin=2.0)
    now = time.time()
    storage.write("ecr", Token(value=VALUE, expires_at=now + left, refreshed_at=1.0,
                               generation=1))
    keeper = Keeper(storage)
    assert (keeper.token("ecr") == VALUE) is handed_out
    wait = RefreshWait(keeper, "ecr", "", NO_TOKEN, wait=0.0, clock=lambda: now)
    assert wait.poll() is None
    assert (wait.value, wait.outcome) == ((VALUE, "new") if handed_out else (None, "timeout"))
