"""Typed settings: what a configuration file means, independent of TOML.

``_config.load`` fills these from a file (with errors that name the file and key); the
server, the CLI and the library build objects from them. Durations are seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

StorageType = Literal["memory", "file", "redis"]
#: Where a listener binds: ``(host, port)`` for TCP, or a unix socket's absolute path.
Address = tuple[str, int] | str
SourceType = Literal["command", "ecr", "ecr-public", "codeartifact", "eks", "rds"]


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The ``[storage]`` table."""

    type: StorageType = "file"
    path: str | None = None  # file: the directory (default: awstoken's default directory)
    url: str | None = None  # redis: redis:// or rediss:// URL
    password_env: str | None = None  # redis: name of an environment variable with the password
    prefix: str = "awstoken:"  # redis: key prefix
    lease: float = 15.0  # redis: leadership lease
    ca_file: str | None = None  # rediss: CA bundle that signed the server's certificate
    cert_file: str | None = None  # rediss: client certificate (Redis tls-auth-clients)
    key_file: str | None = None  # rediss: the client certificate's key (default: in cert_file)


@dataclass(frozen=True, slots=True)
class FileWrite:
    """One ``writes = [{path, format, url}]`` entry: a config file kept fresh."""

    path: str
    format: str  # one of awstoken._rotation.formats.FORMATS
    url: str | None = None  # the registry or index it is for (default: registries/indexes)


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """One ``[tokens.NAME]`` table."""

    name: str
    source: SourceType = "command"
    # Source-specific keys, validated by the loader: command, token_path, expiry_path (command);
    # region, profile, role_arn (all native); registry_id (ecr); domain, domain_owner, duration
    # (codeartifact); cluster (eks); host, port, user (rds).
    options: Mapping[str, Any] = field(default_factory=dict)
    format: str = "{token}"
    basic_user: str | None = None  # excludes format: Basic base64(user + ":" + token)
    interval: float = 6 * 3600.0
    retry: float = 30.0
    timeout: float = 60.0
    sink: str | None = None  # file written atomically (0600) on each rotation
    sink_content: Literal["value", "raw"] = "value"
    sink_mode: int = 0o600  # the sink file's permissions (0640: a reader group, e.g. nginx's)
    on_rotate: tuple[str, ...] | None = None  # argv run after each rotation, token on stdin
    hook_timeout: float = 30.0
    hook_env: tuple[str, ...] = ()  # variables of awstoken's environment the hook also gets
    # The credential doors: registry hosts (docker credential helper, kubelet) and index URL
    # prefixes (keyring) this token answers for.
    registries: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    sink_format: str | None = None  # merge an entry into the sink file (awstoken._rotation.formats)
    writes: tuple[FileWrite, ...] = ()  # more files kept fresh, each with its format


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``[server]`` table."""

    listen: tuple[str, int] = ("127.0.0.1", 8080)
    workers: int = 1
    admin_listen: tuple[str, int] | None = ("127.0.0.1", 8479)  # None: no admin listener
    # 8479: no common service or Prometheus exporter defaults to it (9090 is Prometheus's own).
    htpasswd: str | None = None  # inbound Basic auth (bcrypt htpasswd file)
    bearer_tokens_env: str | None = None  # env var with comma-separated inbound bearer tokens
    allow: tuple[str, ...] = ()  # client networks (CIDR); empty: any
    ca_file: str | None = None  # extra CA bundle for upstream TLS
    verify_tls: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 300.0  # per read from the upstream
    shutdown_timeout: float = 30.0
    access_log: bool = True
    # The nginx auth_request token endpoint (GET /token/NAME): unix sockets and loopback
    # addresses only (the loader refuses others), never the proxy's listener.
    token_listen: tuple[Address, ...] = ()
    token_socket_mode: int = 0o660  # permissions of the token endpoint's unix sockets
    token_max_age: float = 5.0  # Cache-Control max-age of a 204 (0: no-store): nginx's cache time
    token_hosts: tuple[str, ...] = ()  # more Host names a TCP token listener answers (nginx upstream)
    token_secret_env: str | None = None  # env var with a secret the X-Awstoken-Secret header must carry
    engine: Literal["fast"] = "fast"  # the request path (see docs/benchmarks.md)
    log_level: str = "info"  # "info" or "info,botocore=debug" (see awstoken._logging)
    log_format: Literal["text", "json"] = "text"
    # The proxy's URL as clients know it: Location headers and index bodies point there
    # (None: the address each client connected to; never the client's Host header).
    public_url: str | None = None
    max_connections: int = 4096  # open client connections on the proxy listener (per process)
    head_timeout: float = 60.0  # a client must send a whole request head within this
    keepalive_timeout: float = 75.0  # idle keep-alive client connections are closed after this
    # After an upstream 401/403: the longest a request waits for a refresh it asked for, and
    # the rotators' minimum gap between refreshes (a token younger than that is not waited on).
    refresh_wait: float = 5.0
    refresh_min_gap: float = 10.0
    # Request bodies kept for one retry after a 401/403: in memory up to replay_max_bytes, in
    # a private temporary file up to replay_spool_max_bytes; larger ones are not retried.
    replay_max_bytes: int = 1024 * 1024
    replay_spool_max_bytes: int = 256 * 1024 * 1024
    # Index answers (npm metadata, PEP 503/691 pages) are held whole to rewrite their URLs:
    # the largest body, compressed or decoded; larger ones get a 502 saying so.
    max_index_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """A route's ``cache``: a directory of its own (``path``) and an optional size cap."""

    path: str
    max_size: int | None = None  # bytes; None: no cap


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """One ``[[routes]]`` entry."""

    prefix: str
    upstream: str
    token: str
    header: str = "Authorization"
    strip_prefix: bool = False
    redirects: Literal["follow", "pass"] = "follow"
    follow_http: bool = False  # followed redirects may go to plain http:// targets
    follow_private: bool = False  # ... and to loopback, private, link-local addresses
    cache: CacheSettings | None = None  # pull-through cache of digest-addressed content


@dataclass(frozen=True, slots=True)
class Settings:
    """A whole configuration file."""

    storage: StorageSettings = field(default_factory=StorageSettings)
    tokens: Mapping[str, TokenSettings] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings)
    routes: tuple[RouteSettings, ...] = ()
    path: str | None = None  # the file it came from, for messages
