"""Keep-alive upstream connections per origin."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final

from .origin import Origin, UpstreamError
from .upstream import UpstreamConnection
from .wire import MAX_IDLE, READ_SIZE

#: Seconds a TLS context that could not be made is not tried again (see ``Pool.tls``).
TLS_RETRY: Final = 5.0


class Pool:
    """Keep-alive upstream connections per origin."""

    def __init__(self, *, ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
                 connect_timeout: float, read_timeout: float) -> None:
        """``ssl_context``: the upstreams' TLS context, or a function that makes it, called
        once at the first ``https`` connection (a proxy of plain-HTTP upstreams then never
        loads the system's CA certificates: 40-60 ms of CPU per process)."""
        self.loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        self._tls_failed: tuple[float, str] | None = None  # (retry after, why) see tls()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: dict[str, list[UpstreamConnection]] = {}  # by Origin.url
        self.all: set[UpstreamConnection] = set()
        self.closing = False
        #: Where every connection of the pool reads into (see UpstreamConnection).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def tls(self) -> ssl.SSLContext:
        """The upstreams' TLS context (made now if it was given as a function).

        When it cannot be made (``ca_file`` removed since the start), the failure is
        remembered for ``TLS_RETRY`` seconds: each attempt loads the system's CAs on the
        event loop (40-60 ms), so connections meanwhile fail with the same reason at once.
        """
        context = self._ssl
        if not isinstance(context, ssl.SSLContext):
            failed = self._tls_failed
            now = self.loop.time()
            if failed is not None and now < failed[0]:
                raise ssl.SSLError(failed[1])
            try:
                context = self._ssl = context()
            except Exception as exc:
                self._tls_failed = (now + TLS_RETRY, str(exc))
                raise
            self._tls_failed = None
        return context

    def take(self, origin: Origin) -> UpstreamConnection | None:
        """An idle connection to ``origin``, if there is one."""
        idle = self.idle.get(origin.url)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self, origin: Origin) -> UpstreamConnection:
        """An idle connection to ``origin``, or a new one (connect and TLS bounded in time)."""
        conn = self.take(origin)
        return conn if conn is not None else await self.connect(origin)

    async def connect(self, origin: Origin) -> UpstreamConnection:
        """A new connection to ``origin`` (connect and TLS handshake bounded in time)."""
        try:
            context = self.tls() if origin.tls else None
        except Exception as exc:  # noqa: BLE001 - made at first use: ca_file gone since start
            raise UpstreamError("tls", f"upstream {origin.host}: no TLS context ({exc})",
                                before_response=True) from None
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: UpstreamConnection(self, origin), origin.host, origin.port,
                ssl=context,
                server_hostname=origin.host if origin.tls else None), self.connect_timeout)
        except TimeoutError:
            raise UpstreamError("timeout", f"upstream {origin.host} did not answer in time",
                                before_response=True) from None
        except ssl.SSLCertVerificationError:
            raise UpstreamError("tls", f"upstream {origin.host}: TLS certificate not trusted",
                                before_response=True) from None
        except ssl.SSLError as exc:
            raise UpstreamError("tls", f"upstream {origin.host}: TLS failed ({exc.reason})",
                                before_response=True) from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to upstream {origin.host}:"
                                f"{origin.port} ({exc.strerror or exc})",
                                before_response=True) from None
        self.all.add(conn)
        return conn

    def put(self, conn: UpstreamConnection) -> None:
        idle = self.idle.setdefault(conn.origin.url, [])
        if len(idle) >= MAX_IDLE:
            conn.abort()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.all.discard(conn)
        idle = self.idle.get(conn.origin.url)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (idle or not)."""
        self.closing = True
        for conn in list(self.all):
            conn.abort()
        self.idle.clear()
        await asyncio.sleep(0)
