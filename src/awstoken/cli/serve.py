"""``awstoken serve -c FILE``: rotate the configured tokens and run the configured front doors.

SIGHUP reads FILE again (routes, tokens and request settings; see docs/configuration.md).

The proxy listener when the file has ``[[routes]]``, the token endpoint for nginx
``auth_request`` when it has ``server.token_listen``, the admin listener unless it is off.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._build import build_keeper
from .._config import load
from .._reload import TokenPlan
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
    # Every source, transform and hook is built (validated) here; the rotators start only
    # once every listener is bound, so a server that cannot start runs no source.
    plan = TokenPlan.of(settings)
    path = args.config

    def reload() -> TokenPlan:
        return TokenPlan.of(load(path))

    try:
        return serve(settings, keeper, on_ready=lambda: plan.start(keeper), reload=reload)
    finally:
        keeper.stop()
