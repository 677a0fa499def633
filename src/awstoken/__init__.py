"""awstoken: keep AWS authorization tokens fresh in storage shared by every process.

The module-level functions keep the API of the OpenResty module ``ngx_aws_token``::

    import awstoken
    awstoken.set_storage(awstoken.FileStorage("/run/awstoken"))
    awstoken.rotate("ecr", "aws ecr get-login-password", awstoken.basic_auth("AWS"))
    awstoken.token("ecr")   # "Basic QVdT..." or None while there is none

Objects (:class:`Keeper`, :class:`Rotator`, sources, transforms, storages) offer the same
without module state.
"""

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

__version__ = "0.1.0.dev0"

__all__ = [
    "AwstokenError",
    "Command",
    "CommandError",
    "CommandHook",
    "CommandTimeout",
    "ConfigError",
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
