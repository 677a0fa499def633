"""A process restarted after failures fetches at once when there is no usable token.

Real processes on one FileStorage: the first one fails repeatedly (its backoff is stored in
the record), the second one starts with a working command and must not wait that backoff
out while clients get 503.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.processes import stop

PROGRAM = """
import logging, sys, time, awstoken
logging.basicConfig(level=logging.INFO)
directory, command, retry = sys.argv[1], sys.argv[2], float(sys.argv[3])
keeper = awstoken.Keeper(awstoken.FileStorage(directory, poll=0.2), retry=retry)
keeper.rotate("t", command)
while True:
    time.sleep(1)
"""


def _record(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "t.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _wait(predicate: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_restarted_process_does_not_wait_out_the_previous_backoff(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # The first process fails: a 600 s retry means its stored backoff is at least 10 minutes.
    first = subprocess.Popen([sys.executable, "-c", PROGRAM, str(store), "exit 3", "600"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: (_record(store) or {}).get("failures", 0) >= 1, 30), "no failure stored"
    finally:
        first.kill()
        first.wait()
        assert first.stderr is not None
        first.stderr.close()
    # The restarted process (a working command now, same 600 s retry) fetches at once.
    second = subprocess.Popen([sys.executable, "-c", PROGRAM, str(store), "echo fresh", "600"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        fetched = _wait(lambda: (_record(store) or {}).get("value") == "fresh", 30)
    finally:
        stop(second)
        assert second.stderr is not None
        err = second.stderr.read().decode()
        second.stderr.close()
    assert fetched, f"the restarted process waited for the stored backoff:\n{err}"
