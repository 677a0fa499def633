"""What ``awstoken check`` and ``awstoken serve`` both verify beyond the file itself.

The loader (``_config``) checks the file's syntax, types and keys. This module checks what
the file means on this machine, before anything runs: environment variables the file names,
directories of the token endpoint's sockets, CA bundles, the sources and hooks it builds.
``check`` and ``serve`` call the same :func:`preflight`, so a file that ``check`` accepts is
one that ``serve`` starts with (short of a port already taken).

:func:`insecure_settings` lists settings that work but expose tokens or secrets; both
commands print one warning line per setting.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import urllib.parse
from collections.abc import Callable, Mapping

from .._errors import AwstokenError, ConfigError
from .._redact import redact_url, url_has_password
from .settings import Settings

NOTHING_TO_SERVE = ("nothing to serve: configure [tokens.NAME] (a keeper for the credential "
                    "helpers), [[routes]] (the proxy) or server.token_listen (the token endpoint "
                    "for nginx auth_request)")


def preflight(settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
    """Raise one :class:`ConfigError` listing every problem (``FILE: key: problem``)."""
    found = problems(settings, environ=os.environ if environ is None else environ)
    if found:
        raise ConfigError("\n".join(f"{settings.path or '<config>'}: {p}" for p in found))


def problems(settings: Settings, *, environ: Mapping[str, str]) -> list[str]:
    """Every reason ``serve`` would refuse ``settings`` on this machine, as ``key: problem``."""
    found: list[str] = []
    for check in _CHECKS:
        found.extend(check(settings, environ))
    return found


def _env_set(key: str, variable: str | None, environ: Mapping[str, str]) -> list[str]:
    if variable is not None and not environ.get(variable, "").strip():
        return [f"{key}: the environment variable {variable} is empty or unset"]
    return []


def _serving(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    # Tokens alone make a keeper: it keeps them fresh for the credential doors.
    if not settings.routes and not settings.server.token_listen and not settings.tokens:
        return [NOTHING_TO_SERVE]
    return []


def _storage(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    storage = settings.storage
    found = _env_set("storage.password_env", storage.password_env, environ)
    if storage.type == "file":
        where = storage_location(settings)
        if os.path.exists(where) and not os.path.isdir(where):
            found.append(f"storage.path: {where!r} exists and is not a directory")
    if storage.type == "memory" and settings.server.workers > 1 and settings.routes:
        found.append("server.workers: more than 1 needs a storage shared by processes "
                     "(file or redis), not memory")
    return found


def _server(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    server = settings.server
    found = _env_set("server.token_secret_env", server.token_secret_env, environ)
    found += _env_set("server.bearer_tokens_env", server.bearer_tokens_env, environ)
    for address in server.token_listen:
        if not isinstance(address, str):
            continue
        where = f"server.token_listen: unix:{address}"
        directory = os.path.dirname(address) or "."
        if not os.path.isdir(directory):
            found.append(f"{where}: the directory {directory!r} does not exist (with systemd: "
                         "RuntimeDirectory=)")
        elif os.path.lexists(address) and not stat.S_ISSOCK(os.lstat(address).st_mode):
            found.append(f"{where}: the path exists and is not a socket")
    if server.ca_file is not None:
        import ssl  # only here: 10-15 ms of CPU that `awstoken check` without ca_file never needs

        try:
            ssl.create_default_context(cafile=server.ca_file)
        except (OSError, ssl.SSLError, ValueError):
            found.append(f"server.ca_file: {server.ca_file!r} is not a PEM bundle of CA "
                         "certificates")
    if server.htpasswd is not None:
        found += _htpasswd(settings)
    return found


def _htpasswd(settings: Settings) -> list[str]:
    try:  # parsing needs the proxy extra; without it, serve refuses anyway
        from ..proxy._auth import Htpasswd
    except ImportError:
        return []
    try:
        Htpasswd(str(settings.server.htpasswd))
    except ConfigError as exc:
        return [str(exc)]
    return []


def _tokens(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    from .build import build_source, build_transform
    from .hooks import hooks_from_settings

    found = []
    for token in settings.tokens.values():
        try:
            build_source(token)
            build_transform(token)
            hooks_from_settings(token)
        except AwstokenError as exc:
            found.append(str(exc))
    return found


_CHECKS: tuple[Callable[[Settings, Mapping[str, str]], list[str]], ...] = (
    _serving, _storage, _server, _tokens)


def storage_location(settings: Settings) -> str:
    """Where the records live: the directory, ``this process``, or the redacted Redis URL."""
    storage = settings.storage
    if storage.type == "file":
        if storage.path is not None:
            return storage.path
        from ..storage.file import default_directory

        return str(default_directory())
    if storage.type == "redis":
        return redact_url(storage.url or "")
    return "this process"


# -- insecure settings -----------------------------------------------------------------------


def insecure_settings(settings: Settings) -> list[str]:
    """One ``key: why`` line per setting that works but exposes tokens or secrets."""
    found: list[str] = []
    storage, server = settings.storage, settings.server
    url = storage.url or ""
    if storage.type == "redis" and url_has_password(url) and settings.path is not None:
        mode = _mode(settings.path)
        if mode is not None and mode & 0o044:
            found.append(f"storage.url: holds a password and {settings.path} is readable by "
                         f"{'others' if mode & 0o004 else 'its group'} (mode {mode:04o}): move "
                         "it to storage.password_env or chmod 600 the file")
    if storage.type == "redis" and _cert_reqs_none(url):
        found.append("storage.url: ssl_cert_reqs=none: the Redis server's certificate is not "
                     "checked, so an impostor receives the password and the tokens")
    if not server.verify_tls:
        found.append("server.verify_tls = false: upstream certificates are not checked, so an "
                     "impostor upstream receives the tokens")
    if settings.routes and not _loopback(server.listen[0]) and not _protected(settings):
        found.append(f"server.listen: {server.listen[0]} is not a loopback address and there is "
                     "no inbound authentication (htpasswd, bearer_tokens_env or allow): anyone "
                     "who reaches it uses the tokens")
    if not server.token_secret_env:
        for address in server.token_listen:
            if not isinstance(address, str):
                found.append(f"server.token_listen: {address[0]}:{address[1]} is TCP without "
                             "server.token_secret_env: any local user can read the tokens (use a "
                             "unix socket or set a secret)")
                break
    return found


def _mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def _cert_reqs_none(url: str) -> bool:
    query = urllib.parse.urlsplit(url).query if "?" in url else ""
    values = urllib.parse.parse_qs(query).get("ssl_cert_reqs", [])
    return any(v.strip().lower() in ("none", "cert_none") for v in values)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _protected(settings: Settings) -> bool:
    server = settings.server
    if server.htpasswd or server.bearer_tokens_env:
        return True
    anywhere = {"0.0.0.0/0", "::/0"}
    return bool(server.allow) and not anywhere.intersection(server.allow)
