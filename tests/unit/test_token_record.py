"""Stored records are input: every field is checked when read back (issue 10).

Whoever can write the storage writes records. A malformed or implausible one is refused with
an error naming the field (never the value); FileStorage treats it as absent, logs it once,
counts it, and its leader fetches a fresh token over it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest

import awstoken
from awstoken import FileStorage, Token
from awstoken._rotation.rotator import Rotator, Schedule
from awstoken._sources.command import FunctionSource
from awstoken._sources.transforms import bearer
from awstoken._token import MAX_LIFETIME

NOW = time.time()
GOOD: dict[str, Any] = {"value": "Bearer stored-value-0001", "expires_at": NOW + 3600,
                        "refreshed_at": NOW - 60, "generation": 3, "error": None,
                        "error_at": None, "failures": 0, "leader": "host:1"}

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "expiry-string": ({"expires_at": "2099-01-01"}, "expires_at"),
    "expiry-bool": ({"expires_at": True}, "expires_at"),
    "expiry-nan": ({"expires_at": math.nan}, "expires_at"),
    "expiry-inf": ({"expires_at": math.inf}, "expires_at"),
    "expiry-years-ahead": ({"expires_at": NOW + 5 * 365 * 86400}, "expires_at"),
    "expiry-far-after-refresh": ({"refreshed_at": NOW - 30 * 86400,
                                  "expires_at": NOW - 30 * 86400 + MAX_LIFETIME + 60},
                                 "expires_at"),
    "refreshed-in-the-future": ({"refreshed_at": NOW + 3600}, "refreshed_at"),
    "refreshed-negative": ({"refreshed_at": -1}, "refreshed_at"),
    "error-at-in-the-future": ({"error_at": NOW + 86400, "error": "x", "failures": 1},
                               "error_at"),
    "value-esc": ({"value": "Bearer ab\x1b[2Jcdefgh"}, "control character"),
    "value-nul": ({"value": "Bearer abc\x00defgh"}, "control character"),
    "value-del": ({"value": "Bearer abc\x7fdefgh"}, "control character"),
    "value-c1": ({"value": "Bearer abc\x85defgh"}, "control character"),
    "value-crlf": ({"value": "Bearer abc\r\nX-Evil: 1"}, "control character"),
    "value-empty": ({"value": ""}, "empty"),
    "value-1mib": ({"value": "Bearer " + "a" * (1 << 20)}, "over the limit"),
    "value-number": ({"value": 12345678}, "must be a string"),
    "generation-negative": ({"generation": -1}, "generation"),
    "generation-float": ({"generation": 1.5}, "generation"),
    "generation-bool": ({"generation": True}, "generation"),
    "failures-string": ({"failures": "3"}, "failures"),
    "error-number": ({"error": 42}, "error"),
    "error-huge": ({"error": "e" * 100_000}, "error"),
    "leader-list": ({"leader": ["a"]}, "leader"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_record_is_refused_naming_the_field_not_the_value(case: str) -> None:
    change, field = BAD[case]
    data = json.dumps({**GOOD, **change})
    with pytest.raises(awstoken.StorageError, match=rf"token 'x': not a valid token record "
                       rf"\(.*{field}") as refused:
        Token.from_json(data, "token 'x'", now=NOW)
    assert "stored-value" not in str(refused.value) and "Bearer ab" not in str(refused.value)
    assert len(str(refused.value)) < 400


def test_a_good_record_passes_and_unknown_fields_are_ignored() -> None:
    token = Token.from_json(json.dumps({**GOOD, "fence": 7}), "x", now=NOW)
    assert token.value == GOOD["value"] and token.generation == 3
    failed = Token.from_json(json.dumps({"value": None, "error": "boom", "error_at": NOW,
                                         "failures": 4}), "x", now=NOW)
    assert failed.value is None and failed.failures == 4


def _plant(directory: Path, name: str, record: dict[str, Any]) -> None:
    tmp = directory / f".{name}.plant"
    tmp.write_text(json.dumps(record))
    tmp.chmod(0o600)
    tmp.replace(directory / f"{name}.json")


def test_file_storage_treats_a_bad_record_as_absent_logs_once_and_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = FileStorage(tmp_path, poll=3600)
    _plant(tmp_path, "ecr", {**GOOD, "value": "Bearer planted\x1b[2J-value", "generation": 9})
    with caplog.at_level(logging.WARNING, logger="awstoken"):
        assert storage.get("ecr") is None
        assert storage.read("ecr") is None
        assert storage.read("ecr") is None
    warnings = [r for r in caplog.records if "not a valid token record" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "ecr.json" in warnings[0].getMessage() and "planted" not in warnings[0].getMessage()
    assert storage.invalid_records >= 1
    # The leader treats it as absent and fetches a fresh token over it.
    rotator = Rotator("ecr", FunctionSource(lambda: "fresh-token-0001"), bearer, storage,
                      schedule=Schedule(interval=3600))
    rotator.step()
    assert storage.get("ecr") == "Bearer fresh-token-0001"
    assert json.loads((tmp_path / "ecr.json").read_text())["value"] == "Bearer fresh-token-0001"
    rotator.stop()
    storage.close()


def test_a_planted_far_future_expiry_is_not_served(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, poll=3600)
    _plant(tmp_path, "ecr", {**GOOD, "refreshed_at": time.time(),
                             "expires_at": time.time() + 10 * 365 * 86400})
    assert storage.get("ecr") is None
    storage.close()


def test_a_cached_good_token_outlives_a_bad_record_planted_over_it(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, poll=0.05)
    storage.write("ecr", Token(**GOOD))
    assert storage.get("ecr") == GOOD["value"]
    _plant(tmp_path, "ecr", {**GOOD, "expires_at": "never"})
    time.sleep(0.3)  # a few polls of the cache thread
    assert storage.get("ecr") == GOOD["value"]
    storage.close()


def test_a_huge_stored_failure_count_does_not_break_the_backoff() -> None:
    schedule = Schedule(retry=30)
    record = Token("v", failures=5000, error_at=NOW)
    assert schedule.retry_delay(5000, record, NOW, lambda: 0.0) == schedule.retry_cap
