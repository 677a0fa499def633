"""A process restarted after failures fetches at once when there is no usable token.

Real processes on one FileStorage: the first one fails repeatedly (its backoff is stored in
the record), the second one starts with a working command and must not wait that backoff
out while clients get 503.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.processes import stop
from tests.fixtures.wait import wait_until

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


def test_a_restarted_process_does_not_wait_out_the_previous_backoff(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # The first process fails: a 600 s retry means its stored backoff is at least 10 minutes.
    first = subprocess.Popen([sys.executable, "-c", PROGRAM, str(store), "exit 3", "600"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (_record(store) or {}).get("failures", 0) >= 1, 30, "a failure stored")
    finally:
        first.kill()
        first.wait()
        assert first.stderr is not None
        first.stderr.close()
    # The restarted process (a working command now, same 600 s retry) fetches at once.
    second = subprocess.Popen([sys.executable, "-c", PROGRAM, str(store), "echo fresh", "600"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (_record(store) or {}).get("value") == "fresh", 30,
                   "the restarted process to fetch at once, not after the stored backoff")
    finally:
        stop(second)
        assert second.stderr is not None
        print(second.stderr.read().decode())  # pytest shows it if the test failed
        second.stderr.close()
