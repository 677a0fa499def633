"""FileStorage: tokens shared by every process on one host (the embedded default)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from .._errors import StorageError
from .._fs import Directory, UnsafePath
from .._token import Token, check_name
from ._base import BaseStorage, Clock, log

_Signature = tuple[int, int, int, int] | None


def default_directory() -> Path:
    """``$AWSTOKEN_DIR``, else ``$XDG_RUNTIME_DIR/awstoken``, else ``/tmp/awstoken-<uid>``."""
    explicit = os.environ.get("AWSTOKEN_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "awstoken"
    import tempfile  # only here: with shutil and random it costs more than a door's answer

    return Path(tempfile.gettempdir()) / f"awstoken-{os.getuid()}"


class _FileLease:
    """An exclusive ``flock`` on ``<name>.lock``, held for as long as the file stays open.

    The kernel drops the lock when the process dies, even by SIGKILL, so a dead leader is
    replaced as soon as another process tries to acquire it.
    """

    def __init__(self, directory: Directory, name: str, fd: int) -> None:
        self._directory = directory  # held: the lock file is looked up in the same directory
        self._name = name
        self._fd: int | None = fd

    def held(self) -> bool:
        if self._fd is None:
            return False
        # If the directory was removed or the lock file replaced, another process could lock
        # a new file: this lease is then worthless, so give it up.
        try:
            current = self._directory.stat(self._name)
            same = current is not None and os.path.samestat(os.fstat(self._fd), current)
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

    Only a directory that no other user controls is used: it must be owned by this user and
    not writable by group or others, and so must every ancestor (or be owned by root; sticky
    directories like ``/tmp`` are fine). It is held open from the start and every file is
    opened relative to it without following symlinks, and checked (a regular file of ours):
    a directory renamed away and replaced does not move this process. Records are validated
    when read (:meth:`awstoken.Token.from_json`); a bad one is treated as absent.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, poll: float = 1.0,
                 margin: float = 1.0, clock: Clock = time.time) -> None:
        super().__init__(poll=poll, margin=margin, clock=clock)
        self.path = Path(path) if path is not None else default_directory()
        self._private = path is None
        self._signatures: dict[str, _Signature] = {}
        self._leases: list[_FileLease] = []
        self.invalid_records = 0  # records read that failed validation (treated as absent)
        self._invalid_logged: dict[str, str] = {}
        self._dir = self._open_directory()

    def __repr__(self) -> str:
        return f"FileStorage({str(self.path)!r})"

    def _open_directory(self) -> Directory:
        try:
            return Directory(self.path, create=True, private=self._private)
        except UnsafePath as exc:
            # The default lives in a shared temporary directory: say how to use another.
            hint = ("; set AWSTOKEN_DIR or pass a path to use another directory"
                    if self._private else "")
            raise StorageError(f"storage directory {exc}{hint}") from None
        except OSError as exc:
            raise StorageError(f"storage directory {self.path}: {exc.strerror}") from None

    def _directory(self, *, create: bool = False) -> Directory | None:
        """The held directory; once it was removed, the one at the path, checked again.

        None when it was removed and nothing is at the path yet (and not ``create``).
        """
        if not self._dir.gone():
            return self._dir
        if not create and not os.path.lexists(self.path):
            return None
        self._dir = self._open_directory()
        return self._dir

    def _file(self, name: str) -> str:
        return f"{check_name(name)}.json"

    def _signature(self, name: str) -> _Signature:
        try:
            directory = self._directory()
            st = directory.stat(self._file(name)) if directory is not None else None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot stat {self.path / self._file(name)}: "
                               f"{exc.strerror}") from None
        return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)

    def _stale(self, name: str) -> bool:
        return self._signature(name) != self._signatures.get(name, ())

    def _load(self, name: str) -> Token | None:
        path = self.path / self._file(name)
        try:
            directory = self._directory()
            found = directory.read(self._file(name)) if directory is not None else None
        except UnsafePath as exc:
            self._signatures[name] = self._signature(name)
            self._invalid(name, f"token {name!r} in {exc}")
            return None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot read {path}: {exc.strerror}") from None
        if found is None:
            self._signatures[name] = None
            return None
        data, st = found
        self._signatures[name] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)
        try:
            return Token.from_json(data, where=f"token {name!r} in {path}", now=self.clock())
        except StorageError as exc:
            self._invalid(name, str(exc))
            return None

    def _invalid(self, name: str, error: str) -> None:
        # Whoever could write the file wrote it: a bad record is treated as absent (the
        # leader fetches a fresh one over it), counted, and said once per distinct error.
        self.invalid_records += 1
        if self._invalid_logged.get(name) != error:
            self._invalid_logged[name] = error
            log.warning("awstoken: %s; ignoring it (a fresh token will replace it)", error)

    def _store(self, name: str, token: Token) -> None:
        try:
            directory = self._directory(create=True)
            assert directory is not None
            st = directory.write(self._file(name), token.to_json(), replace_links=True)
        except StorageError as exc:
            raise StorageError(f"cannot write {self.path / self._file(name)}: {exc}") from None
        except UnsafePath as exc:
            raise StorageError(f"cannot write {exc}") from None
        except OSError as exc:
            raise StorageError(f"cannot write {self.path / self._file(name)}: "
                               f"{exc.strerror}") from None
        self._signatures[name] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)

    def _open_lock(self, name: str, *, create: bool) -> tuple[Directory, str, int] | None:
        """The directory, name and an open descriptor of the lock file of ``name``; None
        when it is missing (or, with ``create``, was removed under us: the next step opens
        the directory again). Never through a symbolic link."""
        lock = f"{check_name(name)}.lock"
        try:
            directory = self._directory(create=create)
            if directory is None:
                return None
            return directory, lock, directory.open_lock(lock, create=create)
        except UnsafePath as exc:
            raise StorageError(f"token {name!r}: refusing the lock file {exc}") from None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot open lock file {self.path / lock}: "
                               f"{exc.strerror}") from None

    def acquire(self, name: str) -> _FileLease | None:
        opened = self._open_lock(name, create=True)
        if opened is None:
            return None
        directory, lock, fd = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise StorageError(f"token {name!r}: cannot lock {self.path / lock}: "
                               f"{exc.strerror}") from None
        self._remove_stale_temporaries(directory, name)
        lease = _FileLease(directory, lock, fd)
        # Remember live leases so a forked child can drop its copies (see _after_fork_in_child).
        self._leases = [held for held in self._leases if held._fd is not None] + [lease]
        return lease

    def leader(self, name: str) -> str | None:
        """``host:pid:flock`` of the process holding the lease of ``name`` now (``host:?:flock``
        when its pid cannot be read), or None when nobody holds it (``awstoken status``).

        A shared lock that cannot be taken means that an exclusive one is held. The probe
        holds its shared lock for an instant only; a process trying to lead at that very
        instant finds the lock busy and tries again at its next poll.
        """
        opened = self._open_lock(name, create=False)
        if opened is None:
            return None  # nobody ever led here, or the directory was replaced
        fd = opened[2]
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _flock_holder(os.fstat(fd))
            else:
                return None  # closing the descriptor releases the probe's lock
        finally:
            os.close(fd)
        import socket  # here: the light paths (doors, --version) never ask for a leader

        return f"{socket.gethostname()}:{pid if pid is not None else '?'}:flock"

    @staticmethod
    def _remove_stale_temporaries(directory: Directory, name: str) -> None:
        # A writer killed between creating its temporary and the rename leaves it behind;
        # the new leader sweeps those that are clearly abandoned.
        cutoff = time.time() - 60
        prefix = f".{name}.json."
        with contextlib.suppress(OSError):
            for entry in directory.names():
                if entry.startswith(prefix) and entry.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        st = directory.stat(entry)
                        if st is not None and st.st_mtime < cutoff:
                            directory.unlink(entry)

    def request_refresh(self, name: str) -> None:
        target = f"{check_name(name)}.refresh"
        try:
            directory = self._directory(create=True)
            assert directory is not None
            directory.touch(target)
        except UnsafePath as exc:
            raise StorageError(f"token {name!r}: cannot request a refresh: {exc}") from None
        except OSError as exc:
            raise StorageError(f"token {name!r}: cannot request a refresh: {exc.strerror}") from None

    def refresh_requested(self, name: str) -> float:
        try:
            directory = self._directory()
            st = directory.stat(f"{check_name(name)}.refresh") if directory else None
        except OSError:
            return 0.0
        # Only a regular file of ours counts: anything else was not made by request_refresh.
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return 0.0
        return st.st_mtime

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        for lease in self._leases:
            lease._forget_in_child()
        self._leases = []


def _flock_holder(info: os.stat_result) -> int | None:
    """The pid holding an exclusive ``flock`` on the file of ``info``, from Linux's
    /proc/locks (None elsewhere, or when the holder is outside this process's pid
    namespace)."""
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"; a waiter's line has "->".
        fields = line.split()
        if fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"] and len(fields) > 5 \
                and fields[5] == wanted and fields[4].isdigit() and fields[4] != "0":
            return int(fields[4])
    return None
