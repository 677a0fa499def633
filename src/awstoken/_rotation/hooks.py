"""On-rotate hooks: a file sink and a command, run after each successful rotation.

A hook is any ``RotateHook`` callable ``(name, fetched, token)``. The :class:`Rotator` calls
its hooks after the new token is stored, only in the process that ran the refresh (the
leader), and logs a hook's failure without ever losing the token. The two built-in hooks
also count their runs and failures (:class:`HookStats`) for status output and metrics.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import stat
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from .. import _fs
from .._errors import HookError, HookTimeout
from .._sources.command import Fetched
from .._sources.spawn import Runner
from .._token import Token

log = logging.getLogger("awstoken")

Content = Literal["value", "raw"]
Render = Callable[[str | None, Token], str]
DEFAULT_HOOK_TIMEOUT = 30.0
_CONTENTS = ("value", "raw")


@dataclass(frozen=True, slots=True)
class HookStats:
    """What a hook has done in this process; times are Unix epoch seconds."""

    runs: int = 0
    failures: int = 0  # includes timeouts
    timeouts: int = 0
    last_error: str | None = None  # never contains the token
    last_run_at: float | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_duration: float | None = None  # seconds


class _CountedHook(ABC):
    """Base of the built-in hooks: runs ``_run`` and keeps :class:`HookStats`."""

    def __init__(self, content: Content) -> None:
        if content not in _CONTENTS:
            raise HookError(f"hook content must be 'value' or 'raw', not {content!r}")
        self.content: Content = content
        self._stats = HookStats()
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> HookStats:
        """A snapshot of the counters."""
        return self._stats

    def __call__(self, name: str, fetched: Fetched, token: Token) -> None:
        started, clock = time.time(), time.monotonic()
        try:
            self._run(name, fetched, token)
        except HookError as exc:
            self._count(started, clock, exc)
            raise
        except Exception as exc:  # noqa: BLE001 - anything a render or the OS raises is a hook failure
            # A foreign exception's text may quote its input: keep only its type.
            error = HookError(f"token {name!r}: {self.describe()}: {type(exc).__name__}")
            self._count(started, clock, error)
            raise error from None
        self._count(started, clock, None)

    def _count(self, started: float, clock: float, error: HookError | None) -> None:
        duration = time.monotonic() - clock
        with self._stats_lock:
            stats = replace(self._stats, runs=self._stats.runs + 1, last_run_at=started,
                            last_duration=duration)
            if error is None:
                stats = replace(stats, last_success_at=started)
            else:
                stats = replace(stats, failures=stats.failures + 1, last_error=str(error),
                                last_failure_at=started,
                                timeouts=stats.timeouts + isinstance(error, HookTimeout))
            self._stats = stats

    def _payload(self, fetched: Fetched, token: Token) -> str:
        if self.content == "raw":
            return fetched.token
        if token.value is None:  # the rotator never runs hooks without a value
            raise HookError("the rotated record has no value")
        return token.value

    @abstractmethod
    def describe(self) -> str:
        """What the hook is, for messages (never the token)."""

    @abstractmethod
    def _run(self, name: str, fetched: Fetched, token: Token) -> None:
        """Do the work; raise :class:`HookError` on failure."""


class FileSink(_CountedHook):
    """Write the token to ``path`` on each rotation, atomically and privately.

    The file holds the header value (``content="value"``, e.g. ``Basic QVdT...``) or the raw
    token (``content="raw"``), with no trailing newline. It is written to a temporary file in
    the same directory, flushed to disk, given ``mode`` (default 0600) and renamed over
    ``path``: readers see the old content or the new, never a mix. Missing parent
    directories are created with mode 0700. A directory another user controls (it or an
    ancestor owned by someone other than root or us, or writable by group or others unless
    sticky) and a ``path`` that is a symlink are refused, never written through.
    """

    def __init__(self, path: str | os.PathLike[str], *, content: Content = "value",
                 mode: int = 0o600, render: Render | None = None) -> None:
        super().__init__(content)
        # render(old text or None, token) -> new text: merge an entry into a file the user
        # already has (awstoken._rotation.formats); the file's existing mode is then kept.
        self.render = render
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise HookError(f"file sink {os.fspath(path)}: mode must be a permission between "
                            f"0o000 and 0o777, not {mode!r}")
        self.path = Path(path)
        self.mode = mode

    def __repr__(self) -> str:
        return f"FileSink({str(self.path)!r}, content={self.content!r}, mode={self.mode:#o})"

    def describe(self) -> str:
        return f"file sink {self.path}"

    def _run(self, name: str, fetched: Fetched, token: Token) -> None:
        mode = self.mode
        if self.render is None:
            data = self._payload(fetched, token).encode("utf-8")
        else:
            data, mode = self._merged(name, token)
        try:
            write_atomic(self.path, data, mode)
        except _fs.UnsafePath as exc:
            raise HookError(f"token {name!r}: {self.describe()}: refused: {exc}") from None
        except OSError as exc:
            raise HookError(f"token {name!r}: {self.describe()}: cannot write: "
                            f"{exc.strerror or type(exc).__name__}") from None
        log.debug("awstoken: token %r: wrote %s", name, self.path)

    def _merged(self, name: str, token: Token) -> tuple[bytes, int]:
        """The rendered file and its mode (the existing file's, else ``self.mode``)."""
        assert self.render is not None
        what = f"token {name!r}: {self.describe()}"
        try:
            # Never through a symlink: its target may be anything (another user's file).
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise HookError(f"{what}: not a regular file; left untouched")
                mode = stat.S_IMODE(info.st_mode)
                old: str | None = fh.read().decode("utf-8")
        except FileNotFoundError:
            old, mode = None, self.mode
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HookError(f"{what}: is a symbolic link; left untouched (point sink at "
                                "the file itself)") from None
            raise HookError(f"{what}: cannot read: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise HookError(f"{what}: not UTF-8 text; left untouched") from None
        try:
            return self.render(old, token).encode("utf-8"), mode
        except HookError as exc:
            raise HookError(f"{what}: {exc}; left untouched") from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, chmod, rename).

    Only in a directory no other user controls, never through a symlink: raises
    :class:`awstoken._fs.UnsafePath` (an ``OSError``) naming the path and the problem.
    """
    _fs.write_atomic(path, data, mode)


class CommandHook(_CountedHook):
    """Run ``argv`` after each rotation with the token on standard input.

    The token (``content="raw"``, the default, or ``"value"``, the header value) is written
    to the command's stdin followed by one newline; it is never put in the command line or
    the environment, where other processes could read it. The environment is minimal, not
    awstoken's own (which may hold inbound credentials, the token endpoint's secret, the
    Redis password): ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``LANG``, ``LC_*``, ``TZ`` and
    ``TMPDIR`` where set, the variables named in ``pass_env``, and ``AWSTOKEN_NAME``,
    ``AWSTOKEN_GENERATION`` and ``AWSTOKEN_EXPIRES_AT`` (epoch seconds, empty when unknown).
    Standard output is discarded; the first line of standard error (with the token masked)
    goes into the error when the command fails. Past ``timeout`` seconds the command's whole
    process group is killed.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = DEFAULT_HOOK_TIMEOUT,
                 content: Content = "raw", pass_env: Sequence[str] = ()) -> None:
        super().__init__(content)
        if isinstance(pass_env, str) or not all(
                isinstance(n, str) and _ENV_NAME.fullmatch(n) for n in pass_env):
            raise HookError(f"on-rotate command: pass_env must be a list of environment "
                            f"variable names, not {pass_env!r}")
        self.pass_env = tuple(pass_env)
        if isinstance(argv, str | bytes):
            raise HookError(f"on-rotate command must be an argv list, not a string: {argv!r} "
                            "(use ['sh', '-c', '...'] for a shell command)")
        self.argv = [str(a) for a in argv]
        if not self.argv or not self.argv[0]:
            raise HookError("on-rotate command is empty")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise HookError(f"on-rotate command {self.display!r}: timeout must be a positive "
                            f"number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self._runner = Runner()

    @property
    def display(self) -> str:
        text = shlex.join(self.argv)
        return text if len(text) <= 80 else text[:77] + "..."

    def __repr__(self) -> str:
        return f"CommandHook({self.display!r}, timeout={self.timeout:g}, content={self.content!r})"

    def describe(self) -> str:
        return f"on-rotate command {self.display!r}"

    def _run(self, name: str, fetched: Fetched, token: Token) -> None:
        payload = self._payload(fetched, token)
        env = hook_environment(os.environ, self.pass_env)
        env.update(AWSTOKEN_NAME=name, AWSTOKEN_GENERATION=str(token.generation),
                   AWSTOKEN_EXPIRES_AT="" if token.expires_at is None else f"{token.expires_at:.0f}")
        what = f"token {name!r}: {self.describe()}"
        try:
            done = self._runner.run(self.argv, timeout=self.timeout, env=env, capture_stdout=False,
                                    stdin=(payload + "\n").encode("utf-8"))
        except OSError as exc:
            raise HookError(f"{what} could not start: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise HookTimeout(f"{what} ran past its timeout of {self.timeout:g}s and its process "
                              "group was killed") from None
        if done.returncode != 0:
            raise HookError(f"{what} {done.failure((fetched.token, token.value))}")
        log.debug("awstoken: %s ran", what)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What a hook gets of awstoken's environment by default: enough to find programs, write
#: temporary files and format text; no credentials.
_BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR")


def hook_environment(environ: Mapping[str, str], pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a hook: the few basics of ``environ`` plus ``pass_env``."""
    env = {k: v for k, v in environ.items()
           if k in _BASE_ENV or k.startswith("LC_") or k in pass_env}
    env.setdefault("PATH", os.defpath)
    return env

