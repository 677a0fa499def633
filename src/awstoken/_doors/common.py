"""What every credential door shares: which token answers for a host or URL, and getting it.

The doors (the docker credential helper, the keyring backend, the kubelet credential
provider) are short-lived processes started by other tools. Each reads the storage named by
the configuration file (``AWSTOKEN_CONFIG`` or ``-c``). When storage holds no usable token
and no other process leads the token (no daemon, no library user), the door fetches it once
itself, as the leader, under the storage's lock: a burst of parallel calls makes one source
call and the others read what it stored.

Only the standard library and awstoken's core are imported here; a native AWS source
(botocore) is imported only when this process has to fetch.
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import AwstokenError, ConfigError
from .._token import Token

if TYPE_CHECKING:
    # Only for annotations: the settings classes come with the loader, which only the
    # functions that read a file import (keyring imports this module in every process that
    # uses it, docker's ``version`` needs none of it).
    from .._config.settings import Settings, TokenSettings
    from .._rotation.rotator import Rotator
    from ..storage._base import Lease, Storage

CONFIG_ENV = "AWSTOKEN_CONFIG"
#: A token with less than this many seconds left is not handed out: the tool still has to
#: use it (a pull can take minutes), and a keeper would have refreshed it long before.
DOOR_MARGIN = 30.0
#: How often a door that waits for another process's refresh looks at storage again.
_WAIT_POLL = 0.05

_ECR_HOST = re.compile(r"\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")


class NotFound(AwstokenError):
    """No usable credentials for what was asked; the message says why (never a secret)."""


def load_settings(path: str | None) -> Settings:
    """The settings of ``path`` (default ``$AWSTOKEN_CONFIG``); ConfigError when neither."""
    from .._config.load import load

    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no configuration file: set {CONFIG_ENV} (or give -c FILE)")
    return load(path)


# -- which token -------------------------------------------------------------------------------


def _netloc(host: str, port: int | None, scheme: str) -> str:
    default = {"https": 443, "http": 80}.get(scheme)
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    return host if port is None or port == default else f"{host}:{port}"


def registry_host(server_url: str) -> str:
    """``host[:port]`` of what docker or the kubelet names a registry by (URL, host, image)."""
    text = server_url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    return _netloc(parts.hostname or "", port, "https")


def registries(settings: Settings) -> dict[str, str]:
    """Registry host -> token name: ``registries = [...]`` first, then what ECR implies.

    An ECR source with ``registry_id`` and ``region`` implies its registry host; a route
    whose upstream is an ECR host (or whose token has an ECR source) implies that host.
    """
    found: dict[str, str] = {}
    for name, token in settings.tokens.items():
        for host in token.registries:
            found.setdefault(host, name)
    for name, token in settings.tokens.items():
        for host in token_registries(token)[len(token.registries):]:
            found.setdefault(host, name)
    for route in settings.routes:
        host = registry_host(route.upstream)
        routed = settings.tokens.get(route.token)
        if routed is not None and (_ECR_HOST.fullmatch(host) or routed.source in ("ecr", "ecr-public")):
            found.setdefault(host, route.token)
    return found


def remember(settings: Settings) -> None:
    """Leave the index the next door's fast path reads (see _fastdoor); file storage only."""
    if settings.storage.type != "file" or settings.path is None:
        return
    from ..storage.file import default_directory
    from .fast import write_index

    storage = settings.storage.path or str(default_directory())
    write_index(settings.path, storage, {
        host: (name, settings.tokens[name].source in ("ecr", "ecr-public"),
               settings.tokens[name].basic_user, settings.tokens[name].interval)
        for host, name in registries(settings).items()})


def token_registries(token: TokenSettings) -> tuple[str, ...]:
    """The registry hosts of one token: ``registries``, then the host its ECR source implies."""
    from .._config.options import ECROptions  # loaded with the settings (see the imports)

    opts = token.options
    if isinstance(opts, ECROptions) and opts.registry_id and opts.region:
        implied = f"{opts.registry_id}.dkr.ecr.{opts.region}.amazonaws.com"
        if implied not in token.registries:
            return (*token.registries, implied)
    return token.registries


def registry_token(settings: Settings, server_url: str) -> str:
    """The token name for a registry (exact ``host:port``); raise NotFound."""
    host = registry_host(server_url)
    name = registries(settings).get(host)
    if name is None:
        raise NotFound(f"no token in {settings.path} answers for registry {host!r} (add it to a "
                       "token's registries = [...])")
    return name


def indexes(settings: Settings) -> list[tuple[str, str]]:
    """(index URL prefix, token name) pairs: ``indexes = [...]``, then CodeArtifact hosts."""
    from .._config.options import CodeArtifactOptions  # loaded with the settings (see the imports)

    found = [(url, name) for name, token in settings.tokens.items() for url in token.indexes]
    for name, token in settings.tokens.items():
        opts = token.options
        if isinstance(opts, CodeArtifactOptions) and opts.domain_owner and opts.region:
            host = f"{opts.domain}-{opts.domain_owner}.d.codeartifact.{opts.region}.amazonaws.com"
            found.append((f"https://{host}/", name))
    return found


def _url_key(url: str) -> tuple[str, str, str] | None:
    """(scheme, netloc, path) of a URL; scheme "" for a bare ``host[:port][/path]``."""
    text = url.strip()
    bare = "://" not in text
    parts = urllib.parse.urlsplit("https://" + text if bare else text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.password is not None:
        return None  # never answer for a URL that carries its own password (a user is fine)
    scheme = "" if bare else parts.scheme
    return scheme, _netloc(parts.hostname, port, parts.scheme), parts.path or "/"


def index_token(settings: Settings, url: str) -> str | None:
    """The token for an index URL: the longest configured prefix, else the same host; or None.

    Matching is by scheme, host and port (a bare ``host[:port]``, as pip also asks, by host
    and port only), then path prefix on segment boundaries, so ``https://h/simple`` never
    answers for ``https://h.evil/`` or ``https://h/simpleton``.
    """
    want = _url_key(url)
    if want is None:
        return None
    best: tuple[int, str] | None = None
    same_host: str | None = None
    for prefix, name in indexes(settings):
        have = _url_key(prefix)
        if have is None or have[1] != want[1] or (want[0] and have[0] != want[0]):
            continue
        same_host = same_host or name
        base = have[2].rstrip("/")
        if (want[2] == base or want[2].startswith(base + "/")) and (best is None or len(base) > best[0]):
            best = (len(base), name)
    return best[1] if best is not None else same_host


# -- the credentials in a token value ----------------------------------------------------------


def credentials(value: str, token: TokenSettings) -> tuple[str, str]:
    """(user, password) from a stored header value.

    ``Basic base64(user:password)`` (ECR's ``AWS:...``, ``basic_user``) is split; a raw ECR
    token (base64 of ``AWS:...``) too; ``Bearer X`` and any other value give X with the
    token's ``basic_user``, else ``AWS`` for ECR and ``aws`` for the rest (CodeArtifact).
    """
    from .fast import split

    return split(value, token.source in ("ecr", "ecr-public"), token.basic_user)


# -- getting the token -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A usable token for a door, with what the door needs to say about it."""

    name: str
    record: Token
    value: str
    fetched_here: bool  # True when this process ran the source (no keeper had a token)


def obtain(settings: Settings, name: str, *, storage: Storage | None = None,
           clock: Callable[[], float] = time.time, margin: float = DOOR_MARGIN) -> Answer:
    """The usable token ``name`` from storage, fetching it once as the leader if needed.

    Raises :class:`NotFound` with the reason (the last refresh error, "expired", ...) when
    there is none and this process cannot get one.
    """
    own = storage is None
    if storage is None:
        storage = _build_storage(settings)
    try:
        return _obtain(settings, name, storage, clock, margin)
    finally:
        if own:
            storage.close()


def _build_storage(settings: Settings) -> Storage:
    if settings.storage.type == "file":
        # Directly: the builders module imports the rotator, hooks and every storage.
        from ..storage.file import FileStorage

        return FileStorage(settings.storage.path)
    from .._config.build import build_storage

    return build_storage(settings.storage)


def _usable(record: Token | None, now: float, margin: float) -> str | None:
    """The record's value if it is usable for ``margin`` more seconds, else None."""
    if record is not None and record.value is not None and record.usable(now + margin):
        return record.value
    return None


def _obtain(settings: Settings, name: str, storage: Storage, clock: Callable[[], float],
            margin: float) -> Answer:
    record = storage.read(name)
    value = _usable(record, clock(), margin)
    if record is not None and value is not None:
        return Answer(name, record, value, False)
    token = settings.tokens.get(name)
    if token is None:
        raise NotFound(f"{settings.path}: no [tokens.{name}] table")
    started = clock()
    deadline = time.monotonic() + token.timeout + 5.0
    rotator: Rotator | None = None
    try:
        while True:
            if rotator is None:
                lease = storage.acquire(name)
                if lease is not None:
                    # This process leads now (no keeper holds the lock): step() refreshes
                    # if the record is due, exactly as a keeper's rotator would.
                    rotator = _door_rotator(token, storage, lease, margin)
            fetched = False
            if rotator is not None:
                before = rotator.refreshes + rotator.failures
                rotator.step()
                fetched = rotator.refreshes + rotator.failures > before
            record = storage.read(name)
            now = clock()
            value = _usable(record, now, margin)
            if record is not None and value is not None:
                return Answer(name, record, value, fetched)
            failed = record is not None and record.error is not None and (
                record.value is None or (record.error_at or 0.0) >= started)
            # Give up when this process led (it tried, or the schedule says wait: a failure
            # is being backed off), when the leader's attempt failed, or after the source's
            # timeout; otherwise another process is fetching: wait for its record.
            if rotator is not None or failed or time.monotonic() > deadline:
                raise NotFound(_why(name, record, now, rotator is not None))
            time.sleep(_WAIT_POLL)
    finally:
        if rotator is not None:
            rotator.stop()


def _why(name: str, record: Token | None, now: float, leading: bool) -> str:
    if record is None or (record.value is None and record.error is None):
        return f"token {name!r}: no token stored yet" + (
            "" if leading else "; another process holds its lock and stored none in time")
    if record.error is not None:
        text = record.error
        if not text.startswith(f"token {name!r}"):
            text = f"token {name!r}: {text}"
        return f"{text} (failure {record.failures} in a row)"
    if record.expires_at is not None:
        left = record.expires_at - now
        return (f"token {name!r}: the stored token expired {-left:.0f}s ago" if left <= 0 else
                f"token {name!r}: the stored token expires in {left:.0f}s")
    return f"token {name!r}: no usable token"


def _door_rotator(token: TokenSettings, storage: Storage, lease: Lease, margin: float) -> Rotator:
    """A rotator that leads ``token`` with ``lease`` (this process found no keeper).

    It also refreshes a token inside the door's margin of its expiry. Imported only here:
    a door that reads a usable token never loads the rotator, the sources or the hooks.
    """
    from .._config.build import build_source, build_transform
    from .._config.hooks import hooks_from_settings
    from .._rotation.rotator import Rotator, Schedule

    class DoorRotator(Rotator):
        def _due(self, record: Token | None) -> float:
            due = super()._due(record)
            if record is not None and record.expires_at is not None and not record.failures:
                due = min(due, record.expires_at - margin)
            return due

    try:
        rotator = DoorRotator(token.name, build_source(token), build_transform(token), storage,
                              schedule=Schedule(interval=token.interval, retry=token.retry),
                              on_rotate=hooks_from_settings(token))
    except BaseException:
        lease.release()
        raise
    rotator._lease = lease
    # Not a restarted keeper: each pull is a new process, and a failing source must stay
    # backed off across them (50 pulls, one AWS call), so the stored backoff holds here.
    rotator._tried_as_leader = True
    return rotator
