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

:class:`Runner` is the one way commands run to their end (the Command source, the on-rotate
command hook): a timeout that kills the process group, output captured up to a bound, and
the exit status with the first line of standard error (tokens masked) for the error message.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from .mask import first_line

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


# -- running a command to its end --------------------------------------------------------------

#: The most of a command's standard output kept: a token (at most 16 KiB as a header value) or
#: the JSON document around it. A command that prints more is killed: it is no token source.
MAX_STDOUT = 1024 * 1024
#: The most of standard error kept: only its first line reaches an error message.
MAX_STDERR = 64 * 1024
_CHUNK = 64 * 1024


class OutputTooLarge(Exception):
    """The command printed more than :data:`MAX_STDOUT` bytes on standard output."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A command that ran to its end: its exit status and what it printed (bounded)."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def failure(self, secrets: Iterable[str | None] = ()) -> str:
        """``"exited with status N: <first stderr line>"``, the line masked (see :mod:`.mask`)."""
        return f"exited with status {status(self.returncode)}{first_line(self.stderr, secrets)}"


class Runner:
    """Runs commands to their end: fork-safe (:func:`popen`), each in its own session, within a
    timeout past which its whole process group is killed, output kept up to a bound.

    ``track``: the commands are also killed when the interpreter exits (see :func:`popen`).
    :meth:`cancel` kills the groups of the runs in progress (their :meth:`run` raises).
    """

    def __init__(self, *, track: bool = False) -> None:
        self._track = track
        self._running: set[subprocess.Popen[bytes]] = set()
        self._running_lock = threading.Lock()

    def run(self, args: str | Sequence[str], *, timeout: float, env: Mapping[str, str] | None,
            shell: bool = False, stdin: bytes | None = None,
            capture_stdout: bool = True) -> Finished:
        """Run ``args``; ``stdin`` is written to its standard input (else it reads nothing).

        Raises ``OSError`` when it cannot start, ``subprocess.TimeoutExpired`` past ``timeout``
        and :class:`OutputTooLarge`, the last two after its process group was killed.
        """
        proc = popen(args, shell=shell, env=env, start_new_session=True, track=self._track,
                     stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                     stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
        with self._running_lock:
            self._running.add(proc)
        try:
            out, err = _Capture(proc, stdin or b"").communicate(timeout)
        except BaseException:
            kill_group(proc)
            raise
        finally:
            with self._running_lock:
                self._running.discard(proc)
            untrack(proc)
        return Finished(proc.returncode, out, err)

    def cancel(self) -> None:
        """Kill the process groups of the runs in progress."""
        with self._running_lock:
            procs = list(self._running)
        for proc in procs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


class _Capture:
    """``proc.communicate(stdin, timeout)`` with bounded output: at most :data:`MAX_STDOUT` of
    standard output (more raises :class:`OutputTooLarge`) and the first :data:`MAX_STDERR` of
    standard error (the rest is read and dropped, so the command never blocks on a full pipe).
    """

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes) -> None:
        self.proc = proc
        self.pending = memoryview(stdin)
        self.out = bytearray()
        self.err = bytearray()
        self.selector = selectors.DefaultSelector()

    def communicate(self, timeout: float) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + timeout
        proc = self.proc
        with self.selector:
            for pipe, event in ((proc.stdin, selectors.EVENT_WRITE),
                                (proc.stdout, selectors.EVENT_READ),
                                (proc.stderr, selectors.EVENT_READ)):
                if pipe is not None:
                    self.selector.register(pipe, event)
            while self.selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(proc.args, timeout)
                for key, _ in self.selector.select(left):
                    self._step(cast("IO[bytes]", key.fileobj))  # registered above
        try:
            proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(proc.args, timeout) from None
        return bytes(self.out), bytes(self.err)

    def _step(self, pipe: IO[bytes]) -> None:
        if pipe is self.proc.stdin:
            self._feed(pipe)
            return
        data = os.read(pipe.fileno(), _CHUNK)
        if not data:
            self._close(pipe)
        elif pipe is self.proc.stdout:
            self.out += data
            if len(self.out) > MAX_STDOUT:
                raise OutputTooLarge(MAX_STDOUT)
        else:
            self.err += data[:max(MAX_STDERR - len(self.err), 0)]

    def _feed(self, pipe: IO[bytes]) -> None:
        try:
            written = os.write(pipe.fileno(), self.pending[:select.PIPE_BUF])
        except BrokenPipeError:  # the command does not read its input: as communicate()
            written = len(self.pending)
        self.pending = self.pending[written:]
        if not self.pending:
            self._close(pipe)

    def _close(self, pipe: IO[bytes]) -> None:
        self.selector.unregister(pipe)
        pipe.close()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (started with ``start_new_session``) and reap it.

    The shell may have started children (the aws CLI, a pipe): the group kill takes them all.
    The pipes are closed unread: a descendant that left the group (setsid) may hold them open
    forever, and what the killed command printed last is of no use.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    proc.wait()


def status(returncode: int) -> str:
    """An exit status for messages: ``"3"``, or ``"-9 (killed by SIGKILL)"``."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"{returncode} (killed by {signal.Signals(-returncode).name})"
    return str(returncode)
