"""Inbound authentication: allowed client networks, static bearer tokens, htpasswd (bcrypt).

Secrets are compared in constant time (``hmac.compare_digest``, bcrypt's own check). A
successful Basic check is remembered as a keyed digest of the header (never the password)
until the htpasswd file changes, so bcrypt's deliberate cost is paid once per client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._config.settings import ServerSettings
from .._errors import ConfigError

_CACHE_SIZE = 1024
#: bcrypt checks run at once (threads of their own: never the default executor, which the
#: admin listener and storage reads use) and checks that may wait for one; beyond that a
#: client is told to retry (503), at no cost. 150 failing clients once pushed /readyz from
#: 1 ms to 14-20 s through the shared executor.
CHECK_THREADS = 2
CHECK_QUEUE = 32


class Busy(Exception):
    """Too many credential checks are waiting: answer 503 and let the client retry."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an inbound check: ``status`` 0 means allowed."""

    status: int = 0
    reason: str = ""
    challenge: str | None = None  # WWW-Authenticate for 401

    @property
    def allowed(self) -> bool:
        return self.status == 0


ALLOW = Decision()
BUSY = Decision(503, "too many credential checks in progress; retry shortly")


class Htpasswd:
    """Users and bcrypt hashes from an htpasswd file (``htpasswd -B``), re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._users: dict[str, bytes] = {}
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._key = secrets.token_bytes(32)
        self._dummy: bytes | None = None
        self._executor: ThreadPoolExecutor | None = None  # created on first use
        self._waiting = 0
        self._reload(initial=True)

    def _reload(self, *, initial: bool = False) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            if initial:
                raise ConfigError(f"server.htpasswd {str(self.path)!r}: {exc.strerror}") from None
            self._users, self._signature = {}, None  # fail closed
            self._verified.clear()
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return
        users: dict[str, bytes] = {}
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, digest = line.partition(":")
            if not sep or not digest.startswith(("$2y$", "$2b$", "$2a$")):
                message = (f"server.htpasswd {str(self.path)!r} line {number}: only bcrypt "
                           "entries (htpasswd -B) are supported")
                if initial:
                    raise ConfigError(message)
                continue
            users[user] = digest.replace("$2y$", "$2b$", 1).encode()
        self._users, self._signature = users, signature
        self._verified.clear()
        if users and self._dummy is None:
            import bcrypt

            cost = int(next(iter(users.values()))[4:6])
            self._dummy = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(cost))

    async def check(self, header: str) -> bool:
        """True when ``header`` is ``Basic`` credentials of a user in the file."""
        self._reload()
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        digest = hmac.new(self._key, header.encode(), hashlib.sha256).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        import bcrypt  # the proxy extra brings it

        # Unknown users still pay one bcrypt check, so timing does not reveal who exists.
        stored = self._users.get(user) or self._dummy
        if stored is None:
            return False
        ok = await self._checkpw(bcrypt.checkpw, password.encode(), stored)
        if ok and user in self._users:
            self._verified[digest] = None
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
            return True
        return False


    async def _checkpw(self, checkpw: Callable[[bytes, bytes], bool], password: bytes,
                       stored: bytes) -> bool:
        """``checkpw`` on the bounded pool of bcrypt threads; :class:`Busy` when full."""
        if self._waiting >= CHECK_THREADS + CHECK_QUEUE:
            raise Busy
        if self._executor is None:
            self._executor = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="awstoken-bcrypt")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, checkpw, password, stored)
        finally:
            self._waiting -= 1


class InboundAuth:
    """The server's inbound policy; :meth:`check` runs before any route is looked at."""

    def __init__(self, settings: ServerSettings) -> None:
        try:
            self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allow)
        except ValueError as exc:
            raise ConfigError(f"server.allow: {exc}") from None
        self.bearer: tuple[bytes, ...] = ()
        if settings.bearer_tokens_env:
            raw = os.environ.get(settings.bearer_tokens_env, "")
            self.bearer = tuple(t.strip().encode() for t in raw.split(",") if t.strip())
            if not self.bearer:
                raise ConfigError(f"server.bearer_tokens_env: the environment variable "
                                  f"{settings.bearer_tokens_env} is empty or unset")
        self.htpasswd = Htpasswd(settings.htpasswd) if settings.htpasswd else None
        challenges = []
        if self.htpasswd is not None:
            challenges.append('Basic realm="awstoken"')
        if self.bearer:
            challenges.append('Bearer realm="awstoken"')
        self.challenge = ", ".join(challenges) or None

    @property
    def enabled(self) -> bool:
        return bool(self.networks or self.bearer or self.htpasswd)

    def network_allowed(self, remote: str | None) -> bool:
        if not self.networks:
            return True
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def _bearer_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        candidate = value.strip().encode()
        ok = False
        for token in self.bearer:  # no early exit: the time does not depend on which matched
            ok |= hmac.compare_digest(candidate, token)
        return ok

    async def check(self, remote: str | None, authorization: str | None) -> Decision:
        """Allow, or say why not (403 for networks, 401 for credentials)."""
        if not self.network_allowed(remote):
            return Decision(403, "client address not allowed")
        if self.challenge is None:
            return ALLOW
        if authorization:
            if self.bearer and self._bearer_ok(authorization):
                return ALLOW
            try:
                if self.htpasswd is not None and await self.htpasswd.check(authorization):
                    return ALLOW
            except Busy:
                return BUSY
        return Decision(401, "authentication required", self.challenge)
