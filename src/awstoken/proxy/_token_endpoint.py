"""The token endpoint for nginx ``auth_request``: ``GET /token/NAME`` -> 204 + the value.

nginx (stock, no Lua) asks it in a subrequest and copies the answer onto the proxied request::

    auth_request /_awstoken/ecr;
    auth_request_set $awstoken $upstream_http_x_awstoken_value;
    proxy_set_header Authorization $awstoken;

Answers: 204 with ``X-Awstoken-Value: <header value>`` when the token is usable; 503 with
the reason when there is none or it has expired and no refresh brought one within
``server.refresh_wait`` (the request waits for it, like the proxy's own requests, unless a
refresh failed less than ``server.refresh_min_gap`` ago; nginx then refuses the request: the
upstream never sees it without a token); 404 for a name that is not configured; 403 when a shared secret is
configured and ``X-Awstoken-Secret`` does not carry it; 405 for methods other than GET/HEAD;
421 on a TCP listener without a secret when ``Host`` does not name the listener (DNS rebinding).
A 204 says ``Cache-Control: max-age=N``: N is ``server.token_max_age`` (default 5 s), cut
so that a cached answer never outlives the token, even when a cache serves it stale for a
while after N (:data:`STALE_ALLOWANCE`, for nginx's ``proxy_cache_use_stale updating``);
nginx's ``proxy_cache`` honours it, so nginx asks about once per N seconds instead of once
per request. Every other answer says ``no-store``.

Whoever can connect can read tokens, so this listens only on unix sockets (mode 0660 by
default) and loopback addresses (the configuration loader refuses anything else), each a
listener of its own: never the proxy's or the admin's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from .._config.settings import Address, ServerSettings
from .._errors import ConfigError
from .._rotation.keeper import Keeper
from ._h1 import ClientConnection, Frontend, Request, close_listeners
from ._headers import header
from ._local import Answer, local_frontend, request_path
from ._policy import TokenRefresher

log = logging.getLogger("awstoken.proxy")

PATH_PREFIX = "/token/"
VALUE_HEADER = "X-Awstoken-Value"
SECRET_HEADER = "X-Awstoken-Secret"  # noqa: S105 (a header name, not a secret)
_WARN_EVERY = 60.0  # seconds between two warnings about requests without the secret
#: Seconds a cache may go on using an answer after its max-age while it asks for a new one
#: (the example's nginx bounds that subrequest with 2 s to connect and 5 s to read).
STALE_ALLOWANCE = 10.0


def describe(address: Address) -> str:
    """``unix:/path`` or ``http://host:port`` (IPv6 in brackets), for messages."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_secret(settings: ServerSettings) -> bytes | None:
    """The shared secret from ``server.token_secret_env`` (None when not configured)."""
    if settings.token_secret_env is None:
        return None
    value = os.environ.get(settings.token_secret_env, "").strip()
    if not value:
        raise ConfigError(f"server.token_secret_env: the environment variable "
                          f"{settings.token_secret_env} is empty or unset")
    return value.encode("utf-8", "surrogateescape")


class TokenEndpoint:
    """The request handler (a ``_local`` application) of the token listeners."""

    def __init__(self, keeper: Keeper, token_names: Iterable[str], *, secret: bytes | None = None,
                 max_age: float = 5.0, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] | None = None, hosts: Iterable[str] = (),
                 refresher: TokenRefresher | None = None) -> None:
        self.keeper = keeper
        #: Waits for a token on its way (``server.refresh_wait``); the server shares its own
        #: with the proxy's request path, so both wait on one refresh per token.
        self.refresher = refresher or TokenRefresher(keeper)
        self.names = frozenset(token_names)
        self.secret = secret
        self.max_age = max_age
        #: None: the storage's own clock (the one that decides when a token stops being
        #: handed out), so that max-age and that moment agree.
        self.clock = clock
        # name -> (value, its expiry): the record is read once per new value, not per request.
        self._expiry: dict[str, tuple[str, float | None]] = {}
        self.requests = Counter("awstoken_token_endpoint_requests", "Token endpoint answers, by "
                                "token (empty for unknown names) and status.", ("token", "status"),
                                registry=registry)
        self._warned = -_WARN_EVERY
        self._hosts: dict[int, frozenset[str]] = {}  # listening port -> Host values served
        self._extra_hosts = tuple(hosts)  # server.token_hosts

    def _answer(self, status: int, token: str, text: str = "",
                headers: dict[str, str] | None = None) -> Answer:
        self.requests.labels(token, str(status)).inc()
        return Answer.text(status, text, [("Cache-Control", "no-store"),
                                          *(headers or {}).items()])

    async def __call__(self, conn: ClientConnection, request: Request) -> Answer:
        if self.secret is None and not self._host_ok(conn, request):
            return self._answer(421, "", "misdirected request: the Host header does not name "
                                "this token endpoint\n")
        if request.method not in ("GET", "HEAD"):
            return self._answer(405, "", "method not allowed\n", {"Allow": "GET, HEAD"})
        # The secret first: without it, a client learns nothing, not even which names exist.
        if self.secret is not None and not self._secret_ok(request):
            return self._answer(403, "", f"forbidden: {SECRET_HEADER} is missing or wrong\n")
        path = request_path(request)
        name = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        if name not in self.names:
            return self._answer(404, "", "no such token\n")
        # The hot dict answers without I/O; a storage read (a Redis round trip, a name not
        # cached yet) runs in a thread, never on the event loop. No usable token: wait for
        # the refresh (serve listens before its first fetch ends), as the proxy's requests do.
        value = self.keeper.storage.values.get(name)
        if value is None:
            value = await self.refresher.usable(name)
        if value is None:
            reason = await self.refresher.reason(name)
            return self._answer(503, name, reason + "\n", {"Retry-After": "1"})
        known = self._expiry.get(name)
        if known is None or known[0] != value:
            record = await asyncio.to_thread(self.keeper.record, name)
            expires = record.expires_at if record is not None and record.value == value else None
            self._expiry[name] = (value, expires)
        self.requests.labels(name, "204").inc()
        return Answer(204, headers=[(VALUE_HEADER, value),
                                    ("Cache-Control", self._cache_control(name, value))])

    def _cache_control(self, name: str, value: str) -> str:
        """``max-age`` of at most ``max_age``, ending :data:`STALE_ALLOWANCE` seconds before
        the token leaves awstoken's own cache."""
        known = self._expiry.get(name)
        if known is None or known[0] != value:  # the caller looked the record up
            known = (value, None)
        seconds = self.max_age
        if known[1] is not None:
            # The storage's margin: the moment awstoken itself stops handing the token out.
            storage = self.keeper.storage
            margin = getattr(storage, "margin", 0.0)
            clock: Callable[[], float] = (self.clock if self.clock is not None
                                          else getattr(storage, "clock", time.time))
            seconds = min(seconds, known[1] - margin - STALE_ALLOWANCE - clock())
        return f"max-age={int(seconds)}" if seconds >= 1 else "no-store"

    def _host_ok(self, conn: ClientConnection, request: Request) -> bool:
        """On TCP, the Host header must name the listener (its address, or localhost, with
        its port): a web page whose name an attacker re-points at 127.0.0.1 (DNS rebinding)
        sends its own name. Unix sockets are out of a browser's reach; with a secret, the
        page does not know it."""
        transport = conn.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        if not isinstance(sock, tuple):
            return True
        allowed = self._hosts.get(sock[1])
        if allowed is None:
            allowed = self._hosts[sock[1]] = _host_names(str(sock[0]), int(sock[1]),
                                                         self._extra_hosts)
        return (header(request.headers, "host") or "").lower() in allowed

    def _secret_ok(self, request: Request) -> bool:
        assert self.secret is not None
        given = (header(request.headers, SECRET_HEADER.lower()) or "").encode("latin-1")
        if hmac.compare_digest(given, self.secret):
            return True
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:  # at most one line a minute, whatever the rate
            self._warned = now
            log.warning("awstoken: token endpoint: refused a request without the right %s "
                        "header (server.token_secret_env)", SECRET_HEADER)
        return False


def _host_names(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host header values that name a loopback listener ``host:port``: its address or
    ``localhost``, and each ``server.token_hosts`` name (with this port, or as given)."""
    names = {f"[{host}]" if ":" in host else host, "localhost"}
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:
        allowed |= names
    for name in extra:
        allowed.add(name)
        if not name.endswith("]") and ":" not in name:
            allowed.add(f"{name}:{port}")
    return frozenset(allowed)


@dataclass
class _Bound:
    address: Address
    server: asyncio.Server
    inode: int | None = None  # unix sockets: ours to remove at shutdown if still this inode


class TokenListeners:
    """The token endpoint's listeners: bind, report addresses, close (removing our sockets)."""

    def __init__(self, handler: TokenEndpoint, settings: ServerSettings) -> None:
        self.handler = handler
        self.settings = settings
        self._frontend: Frontend = local_frontend(handler, settings, "token endpoint")
        self._bound: list[_Bound] = []

    @property
    def addresses(self) -> list[Address]:
        """What is bound: socket paths and ``(host, port)`` (the real port when 0 was asked)."""
        result: list[Address] = []
        for bound in self._bound:
            if isinstance(bound.address, str):
                result.append(bound.address)
            else:
                name = bound.server.sockets[0].getsockname()
                result.append((str(name[0]), int(name[1])))
        return result

    async def start(self) -> None:
        """Bind every ``server.token_listen`` address; raise ConfigError naming the one that fails."""
        loop = asyncio.get_running_loop()
        for address in self.settings.token_listen:
            if isinstance(address, str):
                sock = _bind_unix(address, self.settings.token_socket_mode)
                inode = os.stat(address).st_ino
                server = await loop.create_unix_server(self._frontend, sock=sock, backlog=1024)
                self._bound.append(_Bound(address, server, inode))
            else:
                try:
                    server = await loop.create_server(self._frontend, address[0], address[1],
                                                      backlog=1024)
                except OSError as exc:
                    raise ConfigError(f"server.token_listen: cannot listen on "
                                      f"{describe(address)}: {exc.strerror}") from None
                self._bound.append(_Bound(address, server))
        for address in self.addresses:
            log.info("awstoken: token endpoint listening on %s (tokens: %s)", describe(address),
                     ", ".join(sorted(self.handler.names)))

    async def stop(self) -> None:
        """Stop accepting, finish in-flight answers (briefly), remove our socket files."""
        await close_listeners(bound.server for bound in self._bound)
        await self._frontend.shutdown(1.0)
        for bound in self._bound:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bound.server.wait_closed(), 1.0)
            if isinstance(bound.address, str):
                with contextlib.suppress(OSError):
                    if os.stat(bound.address).st_ino == bound.inode:
                        os.unlink(bound.address)
        self._bound.clear()


def _bind_unix(path: str, mode: int) -> socket.socket:
    """A listening-ready unix socket at ``path`` with ``mode``, replacing only a stale one."""
    where = f"server.token_listen: unix:{path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{where}: the path exists and is not a socket")
        if _in_use(path):
            raise ConfigError(f"{where}: another process listens on it")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a previous run
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise ConfigError(f"{where}: the directory {os.path.dirname(path)!r} does not exist "
                          "(with systemd: RuntimeDirectory=)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Before listen(): nobody can connect until the mode is right.
        os.chmod(path, mode)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{where}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except TimeoutError:
        return True  # bound and listening, but not accepting: someone else's all the same
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ConfigError(f"server.token_listen: unix:{path}: {exc.strerror}") from None
    else:
        return True
    finally:
        probe.close()


__all__ = ["PATH_PREFIX", "SECRET_HEADER", "VALUE_HEADER", "TokenEndpoint", "TokenListeners",
           "describe", "load_secret"]

