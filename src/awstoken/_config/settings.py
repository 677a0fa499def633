"""Typed settings: what a configuration file means, independent of TOML.

Each field that a TOML key sets declares how the key is read (its metadata, see
:mod:`.reading`): the field's name is the key, its default the key's default. ``load`` reads
a table from these declarations and refuses keys no field declares, so adding a setting is
adding a field. The server, the CLI and the library build objects from these classes.
Durations are seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .._logging import FORMATS as LOG_FORMATS
from . import checks, readers
from .checks import Address
from .options import (
    AwsOptions,
    CodeArtifactOptions,
    CommandOptions,
    ECROptions,
    ECRPublicOptions,
    EKSOptions,
    RDSOptions,
    SourceOptions,
    SourceType,
)
from .reading import (
    boolean,
    choice,
    duration,
    file_path,
    integer,
    read_by,
    setting,
    string,
    value,
)

StorageType = Literal["memory", "file", "redis"]
_ENV = string(pattern=checks.ENV_NAME, expected=checks.ENV_EXPECTED)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The ``[storage]`` table (each key but ``type`` belongs to one type of storage)."""

    type: StorageType = "file"  # read first: it decides which other keys are valid
    # file: the directory (default: awstoken's default directory)
    path: str | None = setting(None, file_path(expected="a directory path"), only=("file",))
    # redis: a redis://, rediss:// or unix:// URL (never echoed: it may hold a password)
    url: str | None = setting(None, value(checks.redis_url,
                                          "a redis://, rediss:// or unix:// URL", required=True),
                              only=("redis",))
    password_env: str | None = setting(None, _ENV, only=("redis",))  # env var with the password
    prefix: str = setting("awstoken:", string(
        pattern=re.compile(r"[^\s]{1,64}"), expected="a key prefix (1 to 64 characters, no spaces)"),
        only=("redis",))
    lease: float = setting(15.0, duration(minimum=1.0), only=("redis",))  # leadership lease
    # rediss: the CA bundle that signed the server's certificate, the client certificate
    # (Redis tls-auth-clients) and its key (default: in cert_file)
    ca_file: str | None = setting(None, file_path(must_exist=True), only=("redis",))
    cert_file: str | None = setting(None, file_path(must_exist=True), only=("redis",))
    key_file: str | None = setting(None, file_path(must_exist=True), only=("redis",))


@dataclass(frozen=True, slots=True)
class FileWrite:
    """One ``writes = [{path, format, url}]`` entry: a config file kept fresh."""

    path: str = field(metadata=read_by(file_path(required=True)))
    format: str = field(metadata=read_by(readers.file_format))  # one of _rotation.formats.FORMATS
    # The registry or index it is for (default: the token's registries or indexes).
    url: str | None = setting(None, value(
        checks.write_url, "a registry host or an http(s) URL without credentials"))


_DURATION = duration()


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """One ``[tokens.NAME]`` table: the keys of every token; ``options`` has its source's."""

    name: str
    # The source and its keys (``source = "..."`` picks the class; see .options).
    options: SourceOptions = field(default_factory=CommandOptions)
    format: str = setting("{token}", readers.token_format)
    basic_user: str | None = setting(None, readers.basic_user)  # Basic base64(user:token)
    interval: float = setting(6 * 3600.0, _DURATION)
    retry: float = setting(30.0, _DURATION)
    timeout: float = setting(60.0, _DURATION)
    sink: str | None = setting(None, file_path())  # written atomically on each rotation
    sink_content: Literal["value", "raw"] = setting("value", choice("value", "raw"))
    # The sink file's permissions (0640: a reader group, e.g. nginx's; never others).
    sink_mode: int = setting(0o600, value(checks.private_mode, checks.MODE_EXPECTED))
    # An argv run after each rotation, the token on stdin.
    on_rotate: tuple[str, ...] | None = setting(None, value(
        checks.argv, "a non-empty list of strings (an argv, run without a shell; the token "
                     "arrives on stdin)"))
    hook_timeout: float = setting(30.0, _DURATION)
    # Variables of awstoken's environment the hook also gets.
    hook_env: tuple[str, ...] = setting((), value(checks.env_names,
                                                  "a list of environment variable names"))
    # The credential doors: registry hosts (docker credential helper, kubelet) and index URL
    # prefixes (keyring) this token answers for.
    registries: tuple[str, ...] = setting((), value(
        checks.registries, 'an array of registry hosts like '
                           '["123456789012.dkr.ecr.us-east-1.amazonaws.com", "registry:5000"]'))
    indexes: tuple[str, ...] = setting((), value(
        checks.indexes, 'an array of index URLs like ["https://pypi.example.com/simple/"]'))
    # Merge an entry into the sink file (awstoken._rotation.formats).
    sink_format: str | None = setting(None, readers.sink_format)
    # More files kept fresh, each with its format.
    writes: tuple[FileWrite, ...] = setting((), readers.writes(FileWrite))

    @property
    def source(self) -> SourceType:
        """The ``source`` key: which of the options classes ``options`` is."""
        return self.options.source


_POSITIVE = duration()
_ANY_DURATION = duration(positive=False)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``[server]`` table."""

    # restart=True: a reload (SIGHUP) keeps the running value until the next restart.
    listen: tuple[str, int] = setting(("127.0.0.1", 8080), value(
        checks.parse_listen, checks.LISTEN_EXPECTED), restart=True)
    workers: int = setting(1, integer(1, 256), restart=True)
    # None: no admin listener. 8479: no common service or Prometheus exporter defaults to it
    # (9090 is Prometheus's own).
    admin_listen: tuple[str, int] | None = setting(("127.0.0.1", 8479), value(
        checks.listen_or_off, checks.LISTEN_EXPECTED + ' or "off"'), restart=True)
    # The nginx auth_request token endpoint (GET /token/NAME): unix sockets and loopback
    # addresses only (the loader refuses others), never the proxy's listener.
    token_listen: tuple[Address, ...] = setting((), readers.token_listen, restart=True)
    # Permissions of the token endpoint's unix sockets.
    token_socket_mode: int = setting(0o660, value(checks.private_mode, checks.MODE_EXPECTED),
                                     restart=True)
    # Cache-Control max-age of a 204 (0: no-store): nginx's cache time.
    token_max_age: float = setting(5.0, duration(positive=False, maximum=300.0))
    token_secret_env: str | None = setting(None, _ENV)  # X-Awstoken-Secret must carry its value
    htpasswd: str | None = setting(None, file_path(must_exist=True))  # inbound Basic auth
    bearer_tokens_env: str | None = setting(None, _ENV)  # comma-separated inbound bearer tokens
    allow: tuple[str, ...] = setting((), value(  # client networks (CIDR); empty: any
        checks.networks, 'an array of networks like ["10.0.0.0/8", "::1/128"]'))
    # CAs for upstream TLS.
    ca_file: str | None = setting(None, file_path(must_exist=True), restart=True)
    verify_tls: bool = setting(True, boolean(), restart=True)
    connect_timeout: float = setting(10.0, _POSITIVE, restart=True)
    read_timeout: float = setting(300.0, _POSITIVE, restart=True)  # per read from the upstream
    shutdown_timeout: float = setting(30.0, _ANY_DURATION)
    access_log: bool = setting(True, boolean())
    engine: Literal["fast"] = setting("fast", value(  # the request path (docs/benchmarks.md)
        checks.engine, "'fast' (the aiohttp request path was retired)"), restart=True)
    log_level: str = setting("info", value(  # "info" or "info,botocore=debug" (_logging)
        checks.log_level, '"debug", "info", "warning", "error" or "critical", optionally '
                          'followed by ",LOGGER=LEVEL" parts'), restart=True)
    log_format: Literal["text", "json"] = setting("text", choice(*LOG_FORMATS), restart=True)
    # More Host names a TCP token listener answers (nginx upstream).
    token_hosts: tuple[str, ...] = setting((), value(
        checks.host_names, 'an array of host names like ["awstoken"] or ["awstoken:8081"]'),
        restart=True)
    # Open client connections on the proxy listener (per process).
    max_connections: int = setting(4096, integer(1, 1_000_000), restart=True)
    # A client sends a whole request head within head_timeout; idle keep-alive connections
    # are closed after keepalive_timeout.
    head_timeout: float = setting(60.0, _POSITIVE, restart=True)
    keepalive_timeout: float = setting(75.0, _POSITIVE, restart=True)
    # The proxy's URL as clients know it: Location headers and index bodies point there
    # (None: the address each client connected to; never the client's Host header).
    public_url: str | None = setting(None, value(
        checks.parse_public_url, 'the proxy\'s URL as clients know it, like '
                                 '"https://registry.example"'))
    # After an upstream 401/403: the longest a request waits for a refresh it asked for, and
    # the rotators' minimum gap between refreshes (a token younger than that is not waited on).
    refresh_wait: float = setting(5.0, duration(positive=False, maximum=300.0))
    refresh_min_gap: float = setting(10.0, duration(positive=False, maximum=3600.0))
    # Request bodies kept for one retry after a 401/403: in memory up to replay_max_bytes, in
    # a private temporary file up to replay_spool_max_bytes; larger ones are not retried.
    replay_max_bytes: int = setting(1024 * 1024, integer(0, 1 << 30))
    replay_spool_max_bytes: int = setting(256 * 1024 * 1024, integer(0, 1 << 40))
    # Index answers (npm metadata, PEP 503/691 pages) are held whole to rewrite their URLs:
    # the largest body, compressed or decoded; larger ones get a 502 saying so.
    max_index_bytes: int = setting(64 * 1024 * 1024, integer(1024, 1 << 32))


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """A route's ``cache``: a directory of its own (``path``) and an optional size cap."""

    path: str = field(metadata=read_by(file_path(required=True,
                                                 expected="the cache directory")))
    max_size: int | None = setting(None, value(checks.parse_size, checks.SIZE_EXPECTED))  # bytes


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """One ``[[routes]]`` entry."""

    prefix: str = field(metadata=read_by(string(
        required=True, pattern=checks.PREFIX,
        expected='a path prefix starting with "/", like "/v2/"')))
    upstream: str = field(metadata=read_by(value(checks.upstream, "an http:// or https:// URL",
                                                 required=True)))
    # The name of a [tokens.NAME] table (the loader checks that the file has it).
    token: str = field(metadata=read_by(string(required=True,
                                               expected="the name of a [tokens.NAME] table")))
    header: str = setting("Authorization", string(
        pattern=checks.HEADER, expected='an HTTP header name like "Authorization"'))
    strip_prefix: bool = setting(False, boolean())
    redirects: Literal["follow", "pass"] = setting("follow", choice("follow", "pass"))
    follow_http: bool = setting(False, boolean())  # followed redirects may go to http:// targets
    follow_private: bool = setting(False, boolean())  # ... and to loopback, private, link-local
    # A pull-through cache of digest-addressed content.
    cache: CacheSettings | None = setting(None, readers.cache(CacheSettings))  # noqa: RUF009


@dataclass(frozen=True, slots=True)
class Settings:
    """A whole configuration file."""

    storage: StorageSettings = field(default_factory=StorageSettings)
    tokens: Mapping[str, TokenSettings] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings)
    routes: tuple[RouteSettings, ...] = ()
    path: str | None = None  # the file it came from, for messages


__all__ = ["Address", "AwsOptions", "CacheSettings", "CodeArtifactOptions", "CommandOptions",
           "ECROptions", "ECRPublicOptions", "EKSOptions", "FileWrite", "RDSOptions",
           "RouteSettings", "ServerSettings", "Settings", "SourceOptions", "SourceType",
           "StorageSettings", "StorageType", "TokenSettings"]
