"""FileStorage under faults: writers killed mid-write, stale temporaries."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import awstoken

WRITER = """
import sys, time, awstoken
storage = awstoken.FileStorage(sys.argv[1])
n = 0
while True:
    n += 1
    storage.write("t", awstoken.Token("Basic " + str(n) * 4000, refreshed_at=time.time(),
                                      generation=n))
    if n == 1:
        print("written", flush=True)
"""


def test_a_writer_killed_mid_write_never_leaves_a_torn_record(tmp_path: Path) -> None:
    store = tmp_path / "store"
    rng = random.Random(7)
    generations = []
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store)],
                                stdout=subprocess.PIPE, text=True)
        # Kill only once a first record exists: on a loaded machine the interpreter's start
        # alone can outlast any fixed delay, and "no record yet" is not what is tested.
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        time.sleep(rng.random() * 0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        record = awstoken.FileStorage(store).read("t")  # raises StorageError if torn
        assert record is not None and record.value is not None
        digit = str(record.generation)
        assert record.value == "Basic " + digit * 4000
        generations.append(record.generation)
    assert max(generations) > 1


def test_the_next_leader_sweeps_abandoned_temporaries(tmp_path: Path) -> None:
    storage = awstoken.FileStorage(tmp_path)
    old = tmp_path / ".t.json.abc123.tmp"
    fresh = tmp_path / ".t.json.def456.tmp"
    old.write_text("partial")
    fresh.write_text("in progress")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    lease = storage.acquire("t")
    assert lease is not None
    assert not old.exists()
    assert fresh.exists()  # may belong to a writer at work right now
