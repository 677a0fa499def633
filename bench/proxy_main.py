"""The awstoken proxy for the benchmark: a fixed token in memory, one route, no access log.

    python bench/proxy_main.py UPSTREAM PORT [WORKERS [CACHE_DIR]]
"""

from __future__ import annotations

import sys

from awstoken import FileStorage, Keeper, MemoryStorage, Token
from awstoken._config.settings import CacheSettings, RouteSettings, ServerSettings, Settings
from awstoken.proxy import serve

TOKEN_HEADER = "Basic QVdTOmJlbmNoLXRva2Vu"


def main() -> int:
    upstream, port = sys.argv[1], int(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    cache = CacheSettings(sys.argv[4]) if len(sys.argv) > 4 else None
    if workers > 1:
        import tempfile

        storage: MemoryStorage | FileStorage = FileStorage(tempfile.mkdtemp(prefix="awstoken-bench-"))
    else:
        storage = MemoryStorage()
    storage.write("ecr", Token(value=TOKEN_HEADER))
    settings = Settings(
        server=ServerSettings(listen=("127.0.0.1", port), admin_listen=None, workers=workers,
                              access_log=False),
        routes=(RouteSettings(prefix="/", upstream=upstream, token="ecr", cache=cache),))
    return serve(settings, Keeper(storage))


if __name__ == "__main__":
    sys.exit(main())
