"""Starting commands from threads of a process that also forks.

``subprocess.Popen`` creates pipes, forks the command and closes the pipes' write ends in the
parent before it returns. If another thread calls ``os.fork()`` inside that window (a server
forking its workers, gunicorn ``--preload``, multiprocessing), the forked child inherits the
write ends and keeps them open: the command's output never reaches end-of-file, and
``communicate()`` waits for the forked child (a long-lived worker: forever), even after the
command itself was killed on timeout. A rotation thread stuck there keeps its lease renewed
and its token never refreshes.

:func:`popen` holds a lock for the duration of ``Popen()``, and an at-fork handler takes the
same lock, so a fork waits (for milliseconds) until no command is half-started.

Commands started with ``track=True`` run in their own session (their process group) and are
killed with it when the interpreter exits: the threads that run them are daemons, so
nothing else would stop them. The exit handler takes the same lock, so a command being
started at that moment is registered before the handler looks, and none starts after it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import subprocess
import threading
from typing import Any

_lock = threading.Lock()
_tracked: set[subprocess.Popen[bytes]] = set()
_exiting = False


def popen(args: Any, *, track: bool = False, **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **options)``, never overlapping a fork of this process.

    ``track``: the command gets its own session and its process group is killed when the
    interpreter exits, unless :func:`untrack` was called first. Once the interpreter is
    exiting, starting a tracked command raises OSError (ECANCELED).
    """
    with _lock:
        if track and _exiting:
            raise OSError(errno.ECANCELED, "the program is exiting")
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            args, **({"start_new_session": True, **options} if track else options))
        if track:
            _tracked.add(proc)
        return proc


def untrack(proc: subprocess.Popen[bytes]) -> None:
    """``proc`` is finished (or killed): no longer kill its group at exit."""
    with _lock:
        _tracked.discard(proc)


@atexit.register
def _kill_tracked() -> None:
    global _exiting
    with _lock:  # waits for a Popen in progress: its command is in _tracked afterwards
        _exiting = True
        procs = list(_tracked)
    for proc in procs:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's threads (and their Popen calls) are not here


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
