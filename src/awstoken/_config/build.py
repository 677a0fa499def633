"""Objects from settings: the storage, each token's source and transform, the keeper.

Loading (``_config.load``) validated everything already; errors here are about the
environment (a missing variable, an unavailable extra), named by key as in the file.

Each builder imports what it builds: ``awstoken get`` and ``status`` and the credential
doors build a storage only, and the keeper, the rotator and the command source (subprocess,
signal, socket, random: about a third of such a command's CPU) are not theirs to pay for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from ..storage import FileStorage, MemoryStorage, Storage
from .options import (
    AwsOptions,
    CodeArtifactOptions,
    CommandOptions,
    ECROptions,
    ECRPublicOptions,
    EKSOptions,
    RDSOptions,
)
from .settings import Settings, StorageSettings, TokenSettings

if TYPE_CHECKING:
    from .._rotation.keeper import Keeper
    from .._rotation.rotator import Rotator
    from .._sources.command import Source
    from .._sources.transforms import Transform


def build_storage(settings: StorageSettings) -> Storage:
    """The storage that ``[storage]`` describes."""
    if settings.type == "memory":
        return MemoryStorage()
    if settings.type == "file":
        return FileStorage(settings.path)
    if settings.type == "redis":
        if settings.url is None:
            raise ConfigError("storage.url: missing; the redis storage needs a redis:// URL")
        password = None
        if settings.password_env is not None:
            password = os.environ.get(settings.password_env)
            if password is None:
                raise ConfigError(f"storage.password_env: the environment variable "
                                  f"{settings.password_env} is not set")
        # The redis extra: redis-py is imported only when a RedisStorage is made.
        from ..storage.redis import RedisStorage

        # TLS files reach redis-py as its own connection options.
        tls = {option: value for option, value in (("ssl_ca_certs", settings.ca_file),
                                                   ("ssl_certfile", settings.cert_file),
                                                   ("ssl_keyfile", settings.key_file))
               if value is not None}
        storage: Storage = RedisStorage(settings.url, prefix=settings.prefix, lease=settings.lease,
                                        password=password, redis_options=tls or None)
        return storage
    raise ConfigError(f"storage.type: unknown storage type {settings.type!r}")


def build_source(token: TokenSettings) -> Source:
    """The source of ``[tokens.NAME]``."""
    from .._sources.command import Command

    opts = token.options
    if isinstance(opts, CommandOptions):
        if opts.command is None:
            raise ConfigError(f"tokens.{token.name}.command: missing")
        return Command(opts.command if isinstance(opts.command, str) else list(opts.command),
                       timeout=token.timeout, token_path=opts.token_path,
                       expiry_path=opts.expiry_path)
    try:
        return _native(opts, token.timeout)
    except ConfigError as exc:
        raise ConfigError(f"tokens.{token.name}: {exc}") from None


def _native(opts: AwsOptions, timeout: float) -> Source:
    """The native (botocore) source that ``opts`` describe."""
    from .. import aws

    common: dict[str, Any] = {"region": opts.region, "profile": opts.profile,
                              "role_arn": opts.role_arn, "timeout": timeout}
    if isinstance(opts, ECROptions):
        return aws.ECR(opts.registry_id, **common)
    if isinstance(opts, CodeArtifactOptions):
        return aws.CodeArtifact(opts.domain, domain_owner=opts.domain_owner,
                                duration=opts.duration, **common)
    if isinstance(opts, EKSOptions):
        return aws.EKS(opts.cluster, **common)
    if isinstance(opts, RDSOptions):
        return aws.RDS(opts.host, opts.port, opts.user, **common)
    if isinstance(opts, ECRPublicOptions):
        return aws.ECRPublic(**common)
    raise ConfigError(f"source: no source for {type(opts).__name__}")


def build_transform(token: TokenSettings) -> Transform:
    """The transform of ``[tokens.NAME]``: ``basic_user`` or ``format``."""
    from .._sources.transforms import as_transform, basic_auth

    if token.basic_user is not None:
        return basic_auth(token.basic_user)
    return as_transform(None if token.format == "{token}" else token.format)


def build_keeper(settings: Settings) -> Keeper:
    """A Keeper on the storage of ``settings``; rotators are added per token by the caller."""
    from .._rotation.keeper import Keeper

    return Keeper(build_storage(settings.storage))


def start_rotators(settings: Settings, keeper: Keeper) -> dict[str, Rotator]:
    """Start one rotator per configured token (each with its interval, retry and timeout).

    Every source, transform and on-rotate hook (sink, command) is built before the first
    rotator starts, so a problem stops everything before anything runs.
    """
    from .reload import TokenPlan

    TokenPlan.of(settings).start(keeper)
    return {name: keeper.rotators[name] for name in settings.tokens}
