"""The pull-through cache's store: what may be cached, objects on disk, locks, eviction.

Only content whose address names it is cached (see ``keys``);
the bytes are verified against that name while they stream, and a mismatch is never stored.

On disk, one directory per configured path, owned by this user and mode 0700 (anything
else is refused at start: its contents could be planted by another user)::

    DIR/objects/KIND-ALGO-HEX   the objects (0600), renamed in whole from tmp/
    DIR/tmp/KIND-ALGO-HEX.PID.RANDOM   objects being written (invisible to readers)
    DIR/locks/KIND-ALGO-HEX     one fetch at a time per object, across processes (flock)
    DIR/locks/.evict            one eviction pass at a time

Each object file starts with one header line, ``awstoken-cache 1 NAME SIZE CONTENT-TYPE``,
then the body. Every file is opened relative to directory descriptors opened once, with
``O_NOFOLLOW``; a reader checks that the file is a regular file of ours, that the header
names the object asked for, and that the body has the recorded size. The bytes are not
re-hashed on each hit (that would cost a read of the whole object and rule out sendfile):
a directory only this user can write holds only what this process verified before the
rename. The modification time is the recency stamp of the least-recently-used eviction
(set on every hit, at most once a minute per object).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from ..._errors import ConfigError
from .keys import Key
from .usage import STATS_FILE, parse_stats

log = logging.getLogger("awstoken.proxy")

_MAGIC = b"awstoken-cache 1 "
_HEADER_MAX = 512
_SIZE_DIGITS = 20
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
#: A lost flock holder cannot block others for longer than this: they then fetch uncached.
LOCK_WAIT = 600.0
#: Seconds a retry is left alone after the disk refused a write (full, read-only).
DEGRADED_FOR = 30.0
#: Seconds between recency stamps of one object.
_TOUCH_EVERY = 60.0


# -- the store ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """An open cached object: its body is ``size`` bytes from ``offset`` of ``fd``."""

    fd: int
    offset: int
    size: int
    content_type: str

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class StoreUnavailable(Exception):
    """The cache directory cannot be used right now (a disk error); proxy uncached."""


class Store:
    """One cache directory (see the module docstring), shared by every worker process."""

    def __init__(self, path: str, max_size: int | None, *, where: str = "cache") -> None:
        self.path = path
        self.max_size = max_size
        self.where = where
        self._fds: dict[str, int] = {}
        self._degraded_until = 0.0
        self._degraded_logged = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create or check the directory; ConfigError when someone else could write it.

        A disk error (read-only, full) only degrades: logged once, retried later.
        """
        try:
            self._open()
        except OSError as exc:
            self._degrade(exc)

    def _open(self) -> None:
        if self._fds:
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS)
        try:
            self._check_ours(root, self.path)
            fds = {"root": root}
            for sub in ("objects", "tmp", "locks"):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub, 0o700, dir_fd=root)
                fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=root)
                fds[sub] = fd
                self._check_ours(fd, os.path.join(self.path, sub))
        except BaseException:
            for fd in locals().get("fds", {"root": root}).values():
                os.close(fd)
            raise
        self._fds = fds
        self._clean_tmp()

    def _check_ours(self, fd: int, path: str) -> None:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ConfigError(f"{self.where}: cache directory {path!r} must be owned by this "
                              f"user (uid {os.geteuid()}) with mode 0700 (it is uid "
                              f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): another "
                              "user could plant content in it")

    def _clean_tmp(self) -> None:
        """Drop temporary files of processes that are gone (a crash mid-write)."""
        tmp = self._fds["tmp"]
        for name in os.listdir(tmp):
            parts = name.rsplit(".", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0
            if pid and _alive(pid):
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=tmp)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def usable(self) -> bool:
        if self._degraded_until:
            if time.monotonic() < self._degraded_until:
                return False
            self._degraded_until = 0.0
            try:
                self._open()
            except OSError as exc:
                self._degrade(exc)
                return False
            except ConfigError as exc:
                self._degrade(OSError(errno.EPERM, str(exc)))
                return False
        return bool(self._fds)

    def _degrade(self, exc: OSError) -> None:
        """Proxy uncached for a while; one log line per degraded period."""
        self._degraded_until = time.monotonic() + DEGRADED_FOR
        if not self._degraded_logged:
            self._degraded_logged = True
            log.warning("awstoken: %s: cache directory %s unusable (%s); proxying uncached "
                        "until it works again", self.where, self.path,
                        exc.strerror or exc)

    def recovered(self) -> None:
        if self._degraded_logged:
            self._degraded_logged = False
            log.warning("awstoken: %s: cache directory %s usable again", self.where, self.path)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: Key) -> Entry | None:
        """The cached object ``key``, opened, or None."""
        objects = self._fds.get("objects")
        if objects is None:
            return None
        try:
            fd = os.open(key.name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=objects)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("awstoken: %s: cannot open cached %s (%s)", self.where, key.name,
                        exc.strerror or exc)
            if exc.errno == errno.ELOOP:  # a symlink: never ours, never followed
                with contextlib.suppress(OSError):
                    os.unlink(key.name, dir_fd=objects)
            return None
        try:
            entry = self._entry(fd, key)
        except (OSError, ValueError) as exc:
            entry = None
            log.warning("awstoken: %s: dropping cached %s: %s", self.where, key.name, exc)
            with contextlib.suppress(OSError):
                os.unlink(key.name, dir_fd=objects)
        if entry is None:
            os.close(fd)
        return entry

    def _entry(self, fd: int, key: Key) -> Entry:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ValueError("not a private regular file of ours")
        head = os.pread(fd, _HEADER_MAX, 0)
        end = head.find(b"\n")
        if not head.startswith(_MAGIC) or end < 0:
            raise ValueError("no cache header")
        fields = head[len(_MAGIC):end].split(b" ")
        if len(fields) != 3 or fields[0].decode("ascii", "replace") != key.name:
            raise ValueError("the header names another object")
        size = int(fields[1])
        offset = end + 1
        if st.st_size - offset != size:
            raise ValueError(f"size {st.st_size - offset} instead of {size}")
        now = time.time()
        if now - st.st_mtime > _TOUCH_EVERY:
            with contextlib.suppress(OSError):
                os.utime(fd)  # the LRU stamp
        return Entry(fd, offset, size, unquote(fields[2].decode("ascii", "replace")))

    # -- writing ---------------------------------------------------------------------------

    def begin(self, key: Key, content_type: str) -> Fill | None:
        """A new temporary object for ``key``; None when the disk refuses (degraded)."""
        tmp = self._fds.get("tmp")
        if tmp is None:
            return None
        name = f"{key.name}.{os.getpid()}.{secrets.token_hex(4)}"
        ctype = quote(content_type[:200], safe="/+;=-._").encode("ascii")
        header = b"%s%s %s %s\n" % (_MAGIC, key.name.encode(), b"0" * _SIZE_DIGITS, ctype)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600,
                         dir_fd=tmp)
        except OSError as exc:
            self._degrade(exc)
            return None
        fill = Fill(self, key, fd, name, len(header))
        fill.write_raw(header)
        return None if fill.failed else fill

    def commit(self, fill: Fill) -> None:
        """Make a verified object visible (blocking: run it in a thread)."""
        fd = fill.fd
        assert fd is not None
        try:
            size = b"%0*d" % (_SIZE_DIGITS, fill.size)
            os.pwrite(fd, size, len(_MAGIC) + len(fill.key.name) + 1)
            # Durable before visible: after a power loss, a renamed object has its bytes.
            os.fsync(fd)
            os.rename(fill.tmp_name, fill.key.name, src_dir_fd=self._fds["tmp"],
                      dst_dir_fd=self._fds["objects"])
        except OSError as exc:
            fill.abandon()  # closes fd
            self._degrade(exc)
            return
        fill.fd = None
        os.close(fd)
        self.recovered()

    def evict(self) -> tuple[int, int]:
        """Remove least-recently-used objects until the total is under ``max_size``
        (blocking). Returns (objects evicted, bytes of objects left)."""
        objects, locks = self._fds.get("objects"), self._fds.get("locks")
        if objects is None or locks is None:
            return 0, 0
        entries = []
        total = 0
        for item in os.scandir(objects):
            with contextlib.suppress(OSError):
                st = item.stat(follow_symlinks=False)
                entries.append((st.st_mtime, st.st_size, item.name))
                total += st.st_size
        if self.max_size is None or total <= self.max_size:
            return 0, total
        try:
            lock = os.open(".evict", os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600, dir_fd=locks)
        except OSError:
            return 0, total
        evicted = 0
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0, total  # another process is evicting
            entries.sort()
            for _, size, name in entries:
                if total <= self.max_size:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=objects)
                    evicted += 1
                    total -= size
                # Its lock file too (else locks/ keeps one file per object ever fetched).
                # A fetch holding it keeps its lock on the unlinked file; at worst a
                # concurrent second fetch of an evicted object: the same bytes, renamed.
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=locks)
        finally:
            os.close(lock)
        return evicted, total

    def usage(self) -> tuple[int, int]:
        """(objects, bytes) in the store."""
        objects = self._fds.get("objects")
        if objects is None:
            return 0, 0
        count = total = 0
        for item in os.scandir(objects):
            with contextlib.suppress(OSError):
                total += item.stat(follow_symlinks=False).st_size
                count += 1
        return count, total

    # -- shared statistics (for ``awstoken cache``) ------------------------------------------

    def add_stats(self, counts: dict[str, int]) -> None:
        """Add ``counts`` to ``DIR/stats.json`` (under flock: every worker adds its own)."""
        root = self._fds.get("root")
        if root is None or not any(counts.values()):
            return
        try:
            fd = os.open(STATS_FILE, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600, dir_fd=root)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            total = parse_stats(os.pread(fd, 65536, 0))
            for name, value in counts.items():
                total[name] = total.get(name, 0) + value
            data = json.dumps(total, sort_keys=True).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass  # statistics are best effort; the disk may be full
        finally:
            os.close(fd)

    # -- one fetch at a time ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, key: Key) -> Any:
        """Hold the right to fetch ``key``: one coroutine per process (an asyncio lock),
        one process per host (flock on ``locks/NAME``). Waits while another holds it;
        after :data:`LOCK_WAIT` seconds, or when locking fails, goes on without it."""
        name = key.name
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        self._lock_users[name] = self._lock_users.get(name, 0) + 1
        fd = -1
        try:
            async with lock:
                fd = await self._flock(name)
                yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the flock
            users = self._lock_users[name] - 1
            if users:
                self._lock_users[name] = users
            else:
                del self._lock_users[name]
                self._locks.pop(name, None)

    async def _flock(self, name: str) -> int:
        locks = self._fds.get("locks")
        if locks is None:
            return -1
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600, dir_fd=locks)
        except OSError:
            return -1
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return -1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            except OSError:
                os.close(fd)
                return -1


class Fill:
    """An object being written while it streams to the client: hashed, then committed
    (renamed into ``objects/``) only when the hash matches its name."""

    def __init__(self, store: Store, key: Key, fd: int, tmp_name: str, header: int) -> None:
        self.store = store
        self.key = key
        self.fd: int | None = fd
        self.tmp_name = tmp_name
        self.size = 0
        self.header = header
        self.failed = False
        self.hash = hashlib.new(key.algo)

    def write_raw(self, data: bytes | memoryview) -> None:
        fd = self.fd
        if fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            self.failed = True
            self.store._degrade(exc)
            self.abandon()

    def write(self, data: bytes | memoryview) -> None:
        """One piece of the body: hashed always, written while the disk takes it."""
        self.hash.update(data)
        self.size += len(data)
        if self.fd is not None:
            self.write_raw(data)

    def matches(self) -> bool:
        return self.hash.hexdigest() == self.key.hex

    def abandon(self) -> None:
        """Forget the temporary file (nothing was visible)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        tmp = self.store._fds.get("tmp")
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_name, dir_fd=tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
