"""FileStorage: tokens shared by every process on one host (the embedded default)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path

from .._errors import StorageError
from .._token import Token
from ._base import BaseStorage, Clock, check_name, log

_Signature = tuple[int, int, int, int] | None


def default_directory() -> Path:
    """``$AWSTOKEN_DIR``, else ``$XDG_RUNTIME_DIR/awstoken``, else ``/tmp/awstoken-<uid>``."""
    explicit = os.environ.get("AWSTOKEN_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "awstoken"
    return Path(tempfile.gettempdir()) / f"awstoken-{os.getuid()}"


class _FileLease:
    """An exclusive ``flock`` on ``<name>.lock``, held for as long as the file stays open.

    The kernel drops the lock when the process dies, even by SIGKILL, so a dead leader is
    replaced as soon as another process tries to acquire it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd

    def held(self) -> bool:
        if self._fd is None:
            return False
        # If the directory was removed or the lock file replaced, another process could lock
        # a new file: this lease is then worthless, so give it up.
        try:
            same = os.path.samestat(os.fstat(self._fd), os.stat(self._path))
        except OSError:
            same = False
        if not same:
            self.release()
        return same

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _forget_in_child(self) -> None:
        # After fork the child shares the parent's lock; closing its copy keeps the
        # parent's leadership intact and makes the child a follower.
        self.release()


class FileStorage(BaseStorage):
    """Tokens in a directory, one JSON file per token, shared by all processes of a host.

    Records are written atomically (temporary file, ``fsync``, rename) with mode 0600 in a
    directory created with mode 0700. Leadership is an ``fcntl.flock`` on ``<name>.lock``.
    Readers cache values in memory and revalidate with one ``stat`` per token every
    ``poll`` seconds, so a new token reaches every process within ``poll`` seconds.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, poll: float = 1.0,
                 margin: float = 1.0, clock: Clock = time.time) -> None:
        super().__init__(poll=poll, margin=margin, clock=clock)
        self.path = Path(path) if path is not None else default_directory()
        self._signatures: dict[str, _Signature] = {}
        self._leases: list[_FileLease] = []
        self.invalid_records = 0  # records read that failed validation (treated as absent)
        self._invalid_logged: dict[str, str] = {}
        self._ensure_directory(private=path is None)

    def __repr__(self) -> str:
        return f"FileStorage({str(self.path)!r})"

    def _ensure_directory(self, *, private: bool = False) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.path.lstat()
        except OSError as exc:
            raise StorageError(f"storage directory {self.path}: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StorageError(f"storage directory {self.path}: not a directory")
        # The default lives in a shared temporary directory: refuse one planted by another
        # user, which could read or replace our tokens.
        if private and (info.st_uid != os.getuid() or info.st_mode & 0o077):
            raise StorageError(
                f"storage directory {self.path}: must be owned by uid {os.getuid()} with mode "
                "0700; set AWSTOKEN_DIR or pass a path to use another directory")

    def _file(self, name: str) -> Path:
        return self.path / f"{check_name(name)}.json"

    def _signature(self, name: str) -> _Signature:
        try:
            st = os.stat(self._file(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot stat {self._file(name)}: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)

    def _stale(self, name: str) -> bool:
        return self._signature(name) != self._signatures.get(name, ())

    def _load(self, name: str) -> Token | None:
        path = self._file(name)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            self._signatures[name] = None
            return None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot read {path}: {exc.strerror}") from None
        self._signatures[name] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)
        try:
            return Token.from_json(data, where=f"token {name!r} in {path}", now=self.clock())
        except StorageError as exc:
            # Whoever could write the file wrote it: a bad record is treated as absent (the
            # leader fetches a fresh one over it), counted, and said once per distinct error.
            self.invalid_records += 1
            if self._invalid_logged.get(name) != str(exc):
                self._invalid_logged[name] = str(exc)
                log.warning("awstoken: %s; ignoring it (a fresh token will replace it)", exc)
            return None

    def _store(self, name: str, token: Token) -> None:
        try:
            self._write_file(self._file(name), token.to_json())
        except FileNotFoundError:
            # The directory was removed under us: make it again, then retry once.
            self._ensure_directory()
            self._write_file(self._file(name), token.to_json())

    def _write_file(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{path.name}.", suffix=".tmp")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as fh:  # mkstemp already made it 0600
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None
        st = os.stat(path)
        self._signatures[path.stem] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)

    def acquire(self, name: str) -> _FileLease | None:
        path = self.path / f"{check_name(name)}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            self._ensure_directory()
            return None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot open lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise StorageError(f"token {name!r}: cannot lock {path}: {exc.strerror}") from None
        self._remove_stale_temporaries(name)
        lease = _FileLease(path, fd)
        # Remember live leases so a forked child can drop its copies (see _after_fork_in_child).
        self._leases = [held for held in self._leases if held._fd is not None] + [lease]
        return lease

    def _remove_stale_temporaries(self, name: str) -> None:
        # A writer killed between mkstemp and rename leaves a temporary file behind; the new
        # leader sweeps those that are clearly abandoned.
        cutoff = time.time() - 60
        for tmp in self.path.glob(f".{name}.json.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def request_refresh(self, name: str) -> None:
        path = self.path / f"{check_name(name)}.refresh"
        try:
            path.touch(mode=0o600)
            os.utime(path)
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot request a refresh: {exc.strerror}") from None

    def refresh_requested(self, name: str) -> float:
        try:
            return os.stat(self.path / f"{check_name(name)}.refresh").st_mtime
        except OSError:
            return 0.0

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        for lease in self._leases:
            lease._forget_in_child()
        self._leases = []
