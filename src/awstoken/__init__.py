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

import importlib

# Not `from typing import TYPE_CHECKING`: importing typing costs a credential door more than
# the rest of its answer (type checkers treat this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
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
    from ._rotation.hooks import CommandHook, FileSink, HookStats
    from ._rotation.keeper import Keeper
    from ._rotation.rotator import RotateHook, Rotator, Schedule
    from ._sources.command import Command, Fetched, FunctionSource, Source
    from ._sources.transforms import Transform, basic, basic_auth, bearer, template, validate_value
    from ._token import Token
    from .aws import ECR, EKS, RDS, CodeArtifact, ECRPublic
    from .storage import FileStorage, Lease, MemoryStorage, RedisStorage, Storage

    __version__: str

# Every public name is imported from its module on first access (PEP 562): the credential
# doors (short-lived processes started by docker, pip, the kubelet) import only what they
# use, and `import awstoken` never imports botocore (the native sources live in .aws).
_LAZY: dict[str, str] = {
    **dict.fromkeys(("create", "default_keeper", "manage", "rotate", "set_interval",
                     "set_retry", "set_storage", "set_timeout", "token"), "._api"),
    **dict.fromkeys(("AwstokenError", "CommandError", "CommandTimeout", "ConfigError",
                     "HookError", "HookTimeout", "SourceError", "StorageError",
                     "TokenExpiredError", "TokenUnavailableError", "TokenValueError"), "._errors"),
    **dict.fromkeys(("CommandHook", "FileSink", "HookStats"), "._rotation.hooks"),
    "Keeper": "._rotation.keeper",
    **dict.fromkeys(("RotateHook", "Rotator", "Schedule"), "._rotation.rotator"),
    **dict.fromkeys(("Command", "Fetched", "FunctionSource", "Source"), "._sources.command"),
    "Token": "._token",
    **dict.fromkeys(("Transform", "basic", "basic_auth", "bearer", "template",
                     "validate_value"), "._sources.transforms"),
    **dict.fromkeys(("ECR", "EKS", "RDS", "CodeArtifact", "ECRPublic"), ".aws"),
    **dict.fromkeys(("FileStorage", "Lease", "MemoryStorage", "RedisStorage", "Storage"),
                    ".storage"),
}


def __getattr__(name: str) -> object:
    if name == "__version__":  # from the package metadata: pyproject.toml is where it is set
        from ._version import version

        return version()
    if name == "storage":  # a subpackage that `import awstoken` used to load
        return importlib.import_module(".storage", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'awstoken' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


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
