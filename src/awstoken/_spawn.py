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
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

_lock = threading.Lock()


def popen(args: Any, **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **options)``, never overlapping a fork of this process."""
    with _lock:
        return subprocess.Popen(args, **options)


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's threads (and their Popen calls) are not here


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
