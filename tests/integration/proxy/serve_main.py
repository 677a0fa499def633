"""Run ``awstoken.proxy.serve`` in its own process (for signal and worker tests).

    python -m tests.integration.proxy.serve_main UPSTREAM PORT ADMIN_PORT TOKEN_DIR WORKERS
"""

from __future__ import annotations

import logging
import sys

from awstoken import FileStorage, Keeper
from awstoken._config.settings import RouteSettings, ServerSettings, Settings
from awstoken.proxy import serve


def main() -> int:
    upstream, port, admin, directory, workers = sys.argv[1:6]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    keeper = Keeper(FileStorage(directory))
    keeper.rotate("ecr", ["echo", "Bearer from-command"])
    settings = Settings(
        server=ServerSettings(listen=("127.0.0.1", int(port)), admin_listen=("127.0.0.1", int(admin)),
                              workers=int(workers), shutdown_timeout=10.0),
        routes=(RouteSettings(prefix="/", upstream=upstream, token="ecr"),))
    try:
        return serve(settings, keeper)
    finally:
        keeper.stop()


if __name__ == "__main__":
    sys.exit(main())
