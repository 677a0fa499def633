"""Commands started by a thread while another thread forks (a server forking its workers,
gunicorn --preload): a forked child must never hold a half-started command's pipes."""

from __future__ import annotations

import os
import threading
import time
import warnings

from awstoken import Command


def test_a_fork_never_keeps_a_commands_output_open() -> None:
    stop = threading.Event()
    durations: list[float] = []

    def spawn_loop() -> None:
        command = Command(["echo", "x"], timeout=30)
        while not stop.is_set():
            started = time.monotonic()
            assert command.run() == "x"
            durations.append(time.monotonic() - started)

    thread = threading.Thread(target=spawn_loop)
    thread.start()
    children: list[int] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
            # Fork until the thread has run the command 20 times (bounded: a loaded machine
            # is slow, never a reason to fail).
            deadline = time.monotonic() + 60
            while len(durations) <= 20 and time.monotonic() < deadline:
                pid = os.fork()
                if pid == 0:  # a "worker" that lives on with whatever it inherited
                    time.sleep(2.0)
                    os._exit(0)
                children.append(pid)
                time.sleep(0.02)
    finally:
        stop.set()
        thread.join(60)
        for pid in children:
            os.waitpid(pid, 0)
    assert len(durations) > 20
    # A command whose pipe a forked child kept open returns only when that child exits (2s);
    # `echo` itself takes milliseconds.
    held = [round(d, 2) for d in durations if d >= 1.0]
    assert held == [], f"{len(held)} of {len(durations)} runs waited for a forked child"
