"""Commands started by a thread while another thread forks (a server forking its workers,
gunicorn --preload): a forked child must never hold a half-started command's pipes."""

from __future__ import annotations

import os
import threading
import warnings

from awstoken import Command


def test_a_fork_never_keeps_a_commands_output_open() -> None:
    stop = threading.Event()
    runs: list[int] = []

    def spawn_loop() -> None:
        command = Command(["echo", "x"], timeout=30)
        while not stop.is_set():
            assert command.run() == "x"
            runs.append(1)

    # The forked "workers" live, with whatever they inherited, until this pipe closes: a
    # command whose output one of them holds open cannot end before then. No timing: the
    # check is whether the command thread can finish while they all still live.
    release_r, release_w = os.pipe()
    thread = threading.Thread(target=spawn_loop)
    thread.start()
    children: list[int] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
            # Fork until the thread has run the command 20 times (bounded: a run held by a
            # child stops the count).
            while len(runs) <= 20 and len(children) < 500:
                pid = os.fork()
                if pid == 0:
                    os.close(release_w)
                    os.read(release_r, 1)  # until the test closes its end
                    os._exit(0)
                children.append(pid)
                threading.Event().wait(0.02)
        stop.set()
        thread.join(30)  # the workers still live: a held run never ends
        held = thread.is_alive()
    finally:
        stop.set()
        os.close(release_w)  # the workers exit
        thread.join(60)
        for pid in children:
            os.waitpid(pid, 0)
        os.close(release_r)
    assert not held, f"a command run waited for a forked child ({len(runs)} runs before it)"
    assert len(runs) > 20, f"{len(runs)} command runs in {len(children)} forks"
