"""Files only we control: checked directories held by descriptor, files opened without
following symlinks. Used by FileStorage and the file sinks.

Another local user must not be able to read our tokens, plant a record we serve, or make us
write through a symlink into a file of their choosing. So:

* a directory is trusted only if it and every ancestor are owned by root or by us and not
  writable by group or others (a sticky directory such as ``/tmp`` is fine: others cannot
  rename or remove what we own in it);
* it is opened once and then held by descriptor: every file is opened relative to it
  (``dir_fd``), so renaming the directory away and planting another in its place does not
  move us; a directory that is removed is re-opened by path, and checked again;
* files are opened with ``O_NOFOLLOW`` and checked after opening (``fstat``): a regular file
  owned by us.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path another user could control, or a file that is not what it should be.

    The message (also its ``strerror``, for callers that catch ``OSError``) names the path
    and what is wrong with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _problem(info: os.stat_result, *, owners: tuple[int, ...], what: str) -> str | None:
    if info.st_uid not in owners:
        names = " or ".join("root" if uid == 0 else f"uid {uid}" for uid in owners)
        return f"{what} is owned by uid {info.st_uid}, not {names}"
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        return (f"{what} is writable by {'others' if info.st_mode & 0o002 else 'its group'} "
                f"(mode {stat.S_IMODE(info.st_mode):04o})")
    return None


def check_tree(path: Path, *, owner_only: bool = True, private: bool = False) -> os.stat_result:
    """Check that ``path`` is a directory that only root and we control; return its stat.

    Every ancestor of its real path must be owned by root or us and not writable by group or
    others unless sticky; ``path`` itself must be owned by us (``owner_only``, for the
    storage directory) or by root or us (a sink's directory), and not group/world-writable;
    ``private`` (the default storage directory, in a shared place) also wants mode 0700.
    """
    uid = os.geteuid()
    real = Path(os.path.realpath(path))
    for ancestor in reversed(real.parents):
        try:
            info = os.lstat(ancestor)
        except OSError as exc:
            raise UnsafePath(f"{ancestor}: {exc.strerror}") from None
        problem = _problem(info, owners=(0, uid), what=f"its parent {ancestor}")
        if problem is not None:
            raise UnsafePath(f"{path}: {problem}; another user could replace it")
    try:
        info = os.lstat(real)
    except OSError as exc:
        raise UnsafePath(f"{path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path}: {os.strerror(errno.ENOTDIR)}")
    if private and (info.st_uid != uid or stat.S_IMODE(info.st_mode) & 0o077):
        raise UnsafePath(f"{path}: must be owned by uid {uid} with mode 0700 (it is owned by "
                         f"uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o})")
    owners = (uid,) if owner_only or uid == 0 else (0, uid)
    problem = _problem(info, owners=owners, what="the directory")
    if problem is not None:
        raise UnsafePath(f"{path}: {problem}; another user could read or replace its files")
    return info


class Directory:
    """A trusted directory, held open; file operations relative to it.

    Methods raise :class:`UnsafePath` for files that are not ours (a symlink, a FIFO,
    another user's file) and let ``OSError`` through for ordinary failures.
    """

    def __init__(self, path: Path, *, owner_only: bool = True, create: bool = False,
                 private: bool = False) -> None:
        self.path = path
        self.fd: int | None = None
        if create:
            # A file in the way is reported by check_tree ("Not a directory").
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
        checked = check_tree(path, owner_only=owner_only, private=private)
        try:
            fd = os.open(os.path.realpath(path), _DIR)
        except OSError as exc:
            raise UnsafePath(f"{path}: cannot open: {exc.strerror}") from None
        if not os.path.samestat(os.fstat(fd), checked):
            os.close(fd)
            raise UnsafePath(f"{path}: replaced while it was being checked")
        self.fd = fd

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(9, "directory closed")
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()

    def gone(self) -> bool:
        """True when the directory was removed (its descriptor points at a deleted inode)."""
        try:
            return os.fstat(self._fd()).st_nlink == 0
        except OSError:
            return True

    def _where(self, name: str) -> str:
        return str(self.path / name)

    def _check_file(self, fd: int, name: str) -> os.stat_result:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise UnsafePath(f"{self._where(name)}: not a regular file")
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise UnsafePath(f"{self._where(name)}: owned by uid {info.st_uid}, not by us "
                             f"(uid {os.geteuid()})")
        return info

    def _open(self, name: str, flags: int, mode: int = 0o600) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self._fd())
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
                raise UnsafePath(f"{self._where(name)}: a symbolic link; refusing to follow "
                                 "it") from None
            raise
        return fd, self._check_file(fd, name)

    def stat(self, name: str) -> os.stat_result | None:
        """``lstat`` of ``name``; None when it does not exist."""
        try:
            return os.stat(name, dir_fd=self._fd(), follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, name: str) -> tuple[bytes, os.stat_result] | None:
        """The content and stat of ``name``; None when it does not exist."""
        try:
            fd, info = self._open(name, _READ)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            return fh.read(), info

    def open_lock(self, name: str, *, create: bool = True) -> int:
        """Open (creating, mode 0600, unless not ``create``) the lock file ``name``; the caller
        owns the descriptor. Raises FileNotFoundError when it is missing and not ``create``."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK if create else _READ
        return self._open(name, flags)[0]

    def touch(self, name: str) -> None:
        """Create ``name`` (mode 0600) if needed and set its times to now."""
        fd, _ = self._open(name, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, mode: int = 0o600, *,
              replace_links: bool = False) -> os.stat_result:
        """Replace ``name`` with ``data`` atomically: a new temporary file (``O_EXCL``,
        never followed), written, fsynced, given ``mode``, renamed over ``name``.

        An existing ``name`` that is a symlink (unless ``replace_links``: the rename replaces
        the link itself, never its target) or not a regular file is refused. Returns the
        stat of the new file.
        """
        existing = self.stat(name)
        if existing is not None and stat.S_ISLNK(existing.st_mode) and replace_links:
            pass
        elif existing is not None and not stat.S_ISREG(existing.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(existing.st_mode) else "not a regular file"
            raise UnsafePath(f"{self._where(name)}: {kind}; refusing to replace it")
        # os.urandom is what secrets.token_hex reads; importing secrets (hmac, OpenSSL's hashlib,
        # random) costs a reading door more than its answer.
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        fd, _ = self._open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Created 0600: the content is never more exposed than ``mode`` allows.
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                info = os.fstat(fh.fileno())
            os.replace(tmp, name, src_dir_fd=self._fd(), dst_dir_fd=self._fd())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd())
            raise
        # Make the rename itself durable, so a crash never brings the old file back.
        with contextlib.suppress(OSError):
            os.fsync(self._fd())
        return info

    def names(self) -> list[str]:
        """The names in the directory."""
        return os.listdir(self._fd())

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self._fd())


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically in a trusted directory (see :class:`Directory`).

    Missing parent directories are created with mode 0700. Raises :class:`UnsafePath` for a
    directory another user controls or a target that is a symlink, ``OSError`` otherwise.
    """
    directory = Directory(path.parent, owner_only=False, create=True)
    try:
        directory.write(path.name, data, mode)
    finally:
        directory.close()
