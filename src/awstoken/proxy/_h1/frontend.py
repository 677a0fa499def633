"""The listener's side of the inbound connections: admission, idle sweeps, shutdown."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
from collections.abc import Iterable
from typing import Final

from .inbound import ClientConnection, FastHandler, Handler
from .wire import HEAD_TIMEOUT, KEEPALIVE_TIMEOUT, LINGER_IDLE

log = logging.getLogger("awstoken.proxy")


#: Open client connections per process unless configured (``server.max_connections``).
MAX_CONNECTIONS: Final = 4096


class Frontend:
    """The inbound side: a protocol factory for ``loop.create_server`` and shutdown.

    Bounds what idle or trickling clients can hold: at most ``max_connections`` open
    connections (more are answered 503 and closed), a whole request head within
    ``head_timeout`` seconds of the connection or of the previous answer, and idle
    keep-alive connections closed after ``keepalive_timeout``.
    """

    def __init__(self, handler: Handler, *, max_connections: int = MAX_CONNECTIONS,
                 head_timeout: float = HEAD_TIMEOUT,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 fast: FastHandler | None = None, name: str = "proxy") -> None:
        self.handler = handler
        self.name = name  # the listener, in log lines
        self.fast = fast
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.at_limit = False  # logged once each time the limit is reached
        # LINGER and LINGER_IDLE need no term here: a sweep every 5 s at most is fine for them.
        self._every = max(0.1, min(5.0, head_timeout / 4, keepalive_timeout / 4))
        self._sweeper = self.loop.call_later(self._every, self._sweep)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def admit(self, conn: ClientConnection) -> bool:
        """Count a new connection in, or say no when ``max_connections`` are open."""
        if len(self.connections) < self.max_connections:
            if self.at_limit and len(self.connections) < self.max_connections * 9 // 10:
                self.at_limit = False
                log.warning("awstoken: %s connections back under server.max_connections "
                            "(%d open)", self.name, len(self.connections))
            self.connections.add(conn)
            return True
        if not self.at_limit:
            self.at_limit = True
            log.warning("awstoken: %s: server.max_connections (%d) reached: new clients get "
                        "503 until idle connections time out (head_timeout %gs, "
                        "keepalive_timeout %gs)", self.name, self.max_connections,
                        self.head_timeout, self.keepalive_timeout)
        return False

    def _sweep(self) -> None:
        # One periodic pass instead of a timer per request: close idle keep-alive
        # connections and clients that take too long to send a request head.
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.busy:
                continue
            if conn.lingering is not None:
                if now >= conn.linger_until:
                    conn.close()
                    continue
                limit = LINGER_IDLE
            else:
                limit = self.head_timeout if conn.in_head else self.keepalive_timeout
            if now - conn.since >= limit:
                conn.close()
        self._sweeper = self.loop.call_later(self._every, self._sweep)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections, let requests in flight finish (bounded), abort the rest."""
        self.closing = True
        self._sweeper.cancel()
        deadline = self.loop.time() + timeout
        while True:
            for conn in list(self.connections):
                if not conn.busy and not conn.queue:
                    conn.close()
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        tasks = [c.task for c in list(self.connections) if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)


async def close_listeners(servers: Iterable[asyncio.Server]) -> None:
    """Stop accepting on ``servers`` and close them, without losing a connection accepted
    just before.

    asyncio's selector loop accepts in a callback and builds each connection's transport a
    loop iteration later, in a task; once its server is closed that task fails (Python
    3.11: an assertion, logged only in debug mode) and leaves the accepted socket open,
    its client hanging until its own timeout. So the accepting stops first, the tasks
    already made run, and only then do the servers close. (uvloop builds the transport in
    the accept callback itself.)
    """
    servers = list(servers)
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        for _ in range(3):  # the accept tasks, then their connection_made callbacks
            await asyncio.sleep(0)
    for server in servers:
        server.close()


__all__ = ["MAX_CONNECTIONS", "Frontend", "close_listeners"]
