"""``awstoken serve -c FILE``: rotate the configured tokens and run the configured front doors.

The proxy listener when the file has ``[[routes]]``, the token endpoint for nginx
``auth_request`` when it has ``server.token_listen``, the admin listener unless it is off.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._build import build_keeper, start_rotators
from ._common import add_config_argument, load_settings

NAME = "serve"
HELP = ("keep the configured tokens fresh, proxy requests to the routes' upstreams and answer "
        "nginx auth_request on server.token_listen (either or both)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        from ..proxy import serve
    except ImportError as exc:
        from .._errors import ConfigError

        raise ConfigError(f"awstoken serve needs the proxy extra: pip install 'awstoken[proxy]' "
                          f"({exc.name} is missing)") from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    keeper = build_keeper(settings)
    try:
        start_rotators(settings, keeper)
        return serve(settings, keeper)
    finally:
        keeper.stop()
