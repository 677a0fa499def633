"""The shared wait helper (tests/fixtures/wait.py): what it returns and what it says."""

from __future__ import annotations

import itertools

import pytest

from tests.fixtures.wait import wait_until


def test_returns_the_first_truthy_value_without_waiting_for_the_timeout() -> None:
    values = iter([None, 0, "", "found", "later"])
    assert wait_until(lambda: next(values), timeout=60) == "found"


def test_a_timeout_names_what_was_awaited_and_the_last_value_seen() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError) as info:
        wait_until(lambda: next(counter) < 0 and "never", timeout=0.05, what="a negative count")
    message = str(info.value)
    assert "waited 0.05s for a negative count" in message
    assert "last value seen: False" in message


def test_a_zero_timeout_asks_once() -> None:
    calls: list[int] = []
    with pytest.raises(AssertionError):
        wait_until(lambda: calls.append(1), timeout=0)
    assert calls == [1]
