"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .._errors import ConfigError

if TYPE_CHECKING:
    from .._config.settings import Settings, TokenSettings

CONFIG_ENV = "AWSTOKEN_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``-c/--config FILE``, defaulting to ``$AWSTOKEN_CONFIG``."""
    parser.add_argument(
        "-c", "--config", metavar="FILE", default=os.environ.get(CONFIG_ENV),
        help=f"the configuration file (TOML); default: ${CONFIG_ENV}")


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """``-c FILE NAME``: the arguments of a command about one configured token."""
    add_config_argument(parser)
    parser.add_argument("name", metavar="NAME", help="the token, as in [tokens.NAME]")


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings from ``args.config``; raise ConfigError when none was given."""
    if not args.config:
        raise ConfigError(f"no configuration file: give -c FILE or set {CONFIG_ENV}")
    # Here, not at module level: every command module is imported to build the parser, and
    # the loader (TOML, the settings classes, the checks) is most of a short command's cost.
    from .._config.load import load

    return load(args.config)


def configured_token(settings: Settings, name: str) -> TokenSettings:
    """The ``[tokens.NAME]`` settings; a ConfigError naming the known tokens otherwise."""
    token = settings.tokens.get(name)
    if token is None:
        known = ", ".join(sorted(settings.tokens)) or "none"
        raise ConfigError(f"{settings.path}: no [tokens.{name}] table (tokens: {known})")
    return token
