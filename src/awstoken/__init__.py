"""awstoken: keep AWS authorization tokens fresh in storage shared by every process.

The module-level functions keep the API of the OpenResty module ``ngx_aws_token``::

    import awstoken
    awstoken.set_storage(awstoken.FileStorage("/run/awstoken"))
    awstoken.rotate("ecr", "aws ecr get-login-password", awstoken.basic_auth("AWS"))
    awstoken.token("ecr")   # "Basic QVdT..." or None while there is none

Objects (:class:`Keeper`, :class:`Rotator`, sources, transforms, storages) offer the same
without module state. The native AWS sources (:class:`ECR`, :class:`ECRPublic`,
:class:`CodeArtifact`, :class:`EKS`, :class:`RDS`; extra ``awstoken[aws]``) live in
:mod:`awstoken.aws` and are importable from here too; botocore loads only when one is used.
"""

from typing import TYPE_CHECKING, Any

from ._api import (
    create,
    default_keeper,
    manage,
    rotate,
    set_interval,
    set_retry,
    set_storage,
    set_timeout,
    token,
)
from ._errors import (
    AwstokenError,
    CommandError,
    CommandTimeout,
    ConfigError,
    HookError,
    HookTimeout,
    SourceError,
    StorageError,
    TokenExpiredError,
    TokenUnavailableError,
    TokenValueError,
)
from ._hooks import CommandHook, FileSink, HookStats
from ._keeper import Keeper
from ._rotator import RotateHook, Rotator, Schedule
from ._sources import Command, Fetched, FunctionSource, Source
from ._token import Token
from ._transforms import Transform, basic, basic_auth, bearer, template, validate_value
from .storage import FileStorage, Lease, MemoryStorage, RedisStorage, Storage

if TYPE_CHECKING:
    from .aws import ECR, EKS, RDS, CodeArtifact, ECRPublic

__version__ = "0.1.0.dev0"

# Names served by awstoken.aws, imported on first access so that `import awstoken` never
# imports botocore.
_AWS_SOURCES = frozenset({"CodeArtifact", "ECR", "ECRPublic", "EKS", "RDS"})


def __getattr__(name: str) -> Any:
    if name in _AWS_SOURCES:
        from . import aws

        return getattr(aws, name)
    raise AttributeError(f"module 'awstoken' has no attribute {name!r}")


__all__ = [
    "ECR",
    "EKS",
    "RDS",
    "AwstokenError",
    "CodeArtifact",
    "Command",
    "CommandError",
    "CommandHook",
    "CommandTimeout",
    "ConfigError",
    "ECRPublic",
    "Fetched",
    "FileSink",
    "FileStorage",
    "FunctionSource",
    "HookError",
    "HookStats",
    "HookTimeout",
    "Keeper",
    "Lease",
    "MemoryStorage",
    "RedisStorage",
    "RotateHook",
    "Rotator",
    "Schedule",
    "Source",
    "SourceError",
    "Storage",
    "StorageError",
    "Token",
    "TokenExpiredError",
    "TokenUnavailableError",
    "TokenValueError",
    "Transform",
    "__version__",
    "basic",
    "basic_auth",
    "bearer",
    "create",
    "default_keeper",
    "manage",
    "rotate",
    "set_interval",
    "set_retry",
    "set_storage",
    "set_timeout",
    "template",
    "token",
    "validate_value",
]
