"""The configuration file as typed settings: :func:`load` a TOML file, get :class:`Settings`.

The same loader as ``awstoken check`` and ``awstoken serve``: every problem of a file is
reported at once, in one :class:`ConfigError` with one line per problem naming the file and
the key (``awstoken.toml: tokens.ecr.interval: expected a duration...``), and no value that
may hold a secret is echoed. docs/configuration.md describes every key.

::

    from awstoken.config import build_keeper, load, start_rotators
    from awstoken.proxy import serve

    settings = load("awstoken.toml")
    settings.tokens["ecr"].interval      # seconds
    settings.tokens["ecr"].options       # ECROptions(region="eu-west-1", ...)
    keeper = build_keeper(settings)      # on the configured storage
    serve(settings, keeper, on_ready=lambda: start_rotators(settings, keeper))

Settings are frozen dataclasses and can be made in code as well (``Settings(tokens={"a":
TokenSettings("a", CommandOptions(command="..."))})``); :func:`load` is what validates.
Each source has its options class (:class:`CommandOptions`, :class:`ECROptions`, ...);
``TokenSettings.source`` names it.
"""

from ._config.build import build_keeper, start_rotators
from ._config.load import load, loads
from ._config.options import (
    AwsOptions,
    CodeArtifactOptions,
    CommandOptions,
    ECROptions,
    ECRPublicOptions,
    EKSOptions,
    RDSOptions,
    SourceOptions,
)
from ._config.settings import (
    CacheSettings,
    FileWrite,
    RouteSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    TokenSettings,
)
from ._errors import ConfigError

__all__ = [
    "AwsOptions",
    "CacheSettings",
    "CodeArtifactOptions",
    "CommandOptions",
    "ConfigError",
    "ECROptions",
    "ECRPublicOptions",
    "EKSOptions",
    "FileWrite",
    "RDSOptions",
    "RouteSettings",
    "ServerSettings",
    "Settings",
    "SourceOptions",
    "StorageSettings",
    "TokenSettings",
    "build_keeper",
    "load",
    "loads",
    "start_rotators",
]
