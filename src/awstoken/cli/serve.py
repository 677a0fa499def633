"""``awstoken serve -c FILE``: rotate the configured tokens and run the configured front doors.

SIGHUP reads FILE again (routes, tokens and request settings; see docs/configuration.md).

The proxy listener when the file has ``[[routes]]``, the token endpoint for nginx
``auth_request`` when it has ``server.token_listen``, the admin listener unless it is off.
"""

from __future__ import annotations

import argparse
import logging

from .. import _logging
from ._common import add_config_argument, load_settings

NAME = "serve"
HELP = ("keep the configured tokens fresh, proxy requests to the routes' upstreams and answer "
        "nginx auth_request on server.token_listen (either or both)")

log = logging.getLogger("awstoken")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--log-level", metavar="LEVEL", default=None,
        help="debug, info (default), warning or error; add ',LOGGER=LEVEL' parts for libraries "
             "(botocore, urllib3, aiohttp log at warning otherwise); overrides server.log_level")
    parser.add_argument("--log-format", choices=_logging.FORMATS, default=None,
                        help="text (default) or json (one object per line, for log shippers); "
                             "overrides server.log_format")


def run(args: argparse.Namespace) -> int:
    # Imported here: every command module is imported to build the parser (see cli/__init__).
    from .._config.build import build_keeper
    from .._config.load import load
    from .._config.reload import TokenPlan
    from .._config.validate import insecure_settings, preflight

    settings = load_settings(args)
    # The same checks as `awstoken check`, before any source runs or any socket is bound.
    preflight(settings)
    try:
        from ..proxy import serve
    except ImportError as exc:
        from .._errors import ConfigError

        raise ConfigError(f"awstoken serve needs the proxy extra: pip install 'awstoken[proxy]' "
                          f"({exc.name} is missing)") from None
    _logging.setup(args.log_level or settings.server.log_level,
                   args.log_format or settings.server.log_format)
    for warning in insecure_settings(settings):
        log.warning("awstoken: warning: %s: %s", settings.path, warning)
    keeper = build_keeper(settings)
    # Every source, transform and hook is built (validated) here; the rotators start only
    # once every listener is bound, so a server that cannot start runs no source.
    plan = TokenPlan.of(settings)
    path = args.config

    def reload() -> TokenPlan:
        fresh = load(path)
        preflight(fresh)  # a reloaded file passes the same checks as at start
        return TokenPlan.of(fresh)

    try:
        return serve(settings, keeper, on_ready=lambda: plan.start(keeper), reload=reload)
    finally:
        keeper.stop()
