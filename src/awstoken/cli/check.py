"""``awstoken check -c FILE``: validate a configuration file."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .._errors import ConfigError
from ._common import add_config_argument, load_settings

if TYPE_CHECKING:
    from .._config.settings import Settings

NAME = "check"
HELP = ("validate a configuration file as awstoken serve would (exit 0 if valid, 2 with every "
        "problem otherwise; insecure settings are warned about on stderr)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")


def run(args: argparse.Namespace) -> int:
    # Imported here: every command module is imported to build the parser (see cli/__init__).
    from .._config.validate import insecure_settings, preflight

    try:
        settings = load_settings(args)
        preflight(settings)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        return 2
    for warning in insecure_settings(settings):
        print(f"warning: {settings.path}: {warning}", file=sys.stderr)
    if not args.quiet:
        print(summary(settings))
    return 0


def summary(settings: Settings) -> str:
    """One line per part of the file: what it configures, never a secret."""
    from .._config.validate import storage_location

    storage = settings.storage
    lines = [f"{settings.path}: ok", f"  storage: {storage.type} ({storage_location(settings)})"]
    for name, token in settings.tokens.items():
        lines.append(f"  token {name}: source {token.source}, refresh every "
                     f"{token.interval:g}s, retry after {token.retry:g}s")
    for route in settings.routes:
        lines.append(f"  route {route.prefix} -> {route.upstream} (token {route.token})")
    server = settings.server
    for address in server.token_listen:
        where = f"unix:{address}" if isinstance(address, str) else f"{address[0]}:{address[1]}"
        secret = f", secret from ${server.token_secret_env}" if server.token_secret_env else ""
        lines.append(f"  token endpoint {where} (GET /token/NAME for nginx auth_request{secret})")
    return "\n".join(lines)
