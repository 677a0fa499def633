"""Run the proxy: one process, or a supervisor of N workers; and one worker's main.

With ``workers = N > 1`` the parent starts N workers (fresh interpreters, see ``worker``)
that each bind the proxy address with ``SO_REUSEPORT`` (the kernel spreads connections) and
read the tokens from the shared storage; the parent keeps the tokens fresh, serves the admin
listener and the token endpoint and sums the workers' request metrics (see ``supervisor``).
SIGHUP reloads the configuration (``reload``); with workers, new ones start with it and the
old ones drain and exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import BinaryIO

from ..._config.settings import Settings
from ..._errors import ConfigError
from ..._rotation.keeper import Keeper
from .._auth import InboundAuth
from .._routes import RouteTable
from .._server import (
    ProxyServer,
    check_cache_directories,
    check_something_to_serve,
    token_names,
)
from .._token_endpoint import load_secret
from .._upstream import check_tls
from .process import (
    Control,
    Reload,
    check_fd_budget,
    raise_open_file_limit,
    reload_failed,
    reloaded,
    run_loop,
    tune_malloc,
)
from .supervisor import Supervisor

log = logging.getLogger("awstoken.proxy")


async def bind(server: ProxyServer) -> None:
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise ConfigError(f"cannot listen: {exc.strerror}") from None
    except ConfigError:
        await server.stop()
        raise


async def _serve_one(settings: Settings, keeper: Keeper, *,
                     on_ready: Callable[[], object] | None = None,
                     reload: Reload | None = None) -> int:
    server = ProxyServer(settings, keeper)
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def reload_once() -> None:
        assert reload is not None
        async with lock:
            try:
                plan = await asyncio.to_thread(reload)
                previous = server.settings
                changes = server.reload(plan.settings)
            except ConfigError as exc:
                reload_failed(exc)
                return
            # Stopping a replaced rotator waits for its thread: off the event loop.
            await asyncio.to_thread(plan.apply, keeper, previous)
            reloaded(plan.settings, changes)

    def on_hup() -> None:
        task = asyncio.ensure_future(reload_once())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    control = Control(on_hup if reload is not None else None)
    try:
        await bind(server)
        if on_ready is not None and not control.done.is_set():
            on_ready()  # every listener is bound: now the sources may run
        await control.done.wait()
    finally:
        control.close()
        for task in list(tasks):
            task.cancel()
        await server.stop()
    return control.exit_code


def serve_worker(settings: Settings, keeper: Keeper, metrics_socket: str,
                 ready: BinaryIO) -> int:
    """Run one worker's proxy listener (see ``worker``); write ``ready`` once it is bound."""

    async def main() -> int:
        server = ProxyServer(settings, keeper, reuse_port=True, admin=False,
                             metrics_socket=metrics_socket, token_endpoint=False)
        await bind(server)
        ready.write(b"ready\n")
        ready.close()
        control = Control()
        try:
            await control.done.wait()
        finally:
            control.close()
            await server.stop()
        return control.exit_code

    return run_loop(main())


def serve(settings: Settings, keeper: Keeper, *, on_ready: Callable[[], object] | None = None,
          reload: Reload | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT; return the exit status.

    The caller builds ``keeper``. Every listener is bound before ``on_ready`` is called
    (``awstoken serve`` starts the rotators there, so that no source runs for a server that
    cannot start). On SIGHUP, ``reload`` (when given) reads the configuration again: routes,
    tokens and request settings change without dropping tokens or requests in flight; an
    invalid configuration is logged and the running one kept. Raises
    :class:`awstoken.ConfigError` for unusable settings or a listener that cannot bind.
    """
    # Validate everything once, before any worker starts, so errors reach the user once.
    check_something_to_serve(settings)
    token_names(settings, RouteTable(settings.routes))
    InboundAuth(settings.server)
    check_tls(settings.server)
    load_secret(settings.server)
    check_cache_directories(settings)
    workers = settings.server.workers
    tune_malloc()
    raise_open_file_limit()
    check_fd_budget(settings)
    if workers < 1:
        raise ConfigError(f"server.workers must be at least 1, not {workers}")
    if not settings.routes:
        if workers > 1:
            log.info("awstoken: no [[routes]]: one process serves the token endpoint "
                     "(server.workers applies to the proxy)")
        return run_loop(_serve_one(settings, keeper, on_ready=on_ready, reload=reload))
    if workers == 1:
        return run_loop(_serve_one(settings, keeper, on_ready=on_ready, reload=reload))
    return Supervisor(settings, keeper, on_ready=on_ready, reload=reload).run()


__all__ = ["serve", "serve_worker"]
