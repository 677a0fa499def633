"""The upstream client: one pooled aiohttp session for every route, closed at shutdown."""

from __future__ import annotations

import ssl

import aiohttp

from .._errors import ConfigError
from .._settings import ServerSettings


def tls_context(settings: ServerSettings) -> ssl.SSLContext | bool:
    """Verified TLS by default (system CAs, plus ``ca_file`` when given); off only when asked."""
    if not settings.verify_tls:
        return False
    context = ssl.create_default_context()
    if settings.ca_file:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.ca_file {settings.ca_file!r}: cannot load it "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
    return context


class Upstream:
    """One connection pool shared by all routes (keep-alive, no total timeout).

    ``connect_timeout`` bounds connecting; ``read_timeout`` bounds each wait for upstream
    bytes (a stalled upstream fails, a slow but moving 1 GiB download does not).
    """

    def __init__(self, settings: ServerSettings) -> None:
        self._ssl = tls_context(settings)
        self.timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout,
                                             sock_read=settings.read_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session (created on first use, inside the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl, ttl_dns_cache=60,
                                             enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(), read_bufsize=1024 * 1024,
                max_field_size=64 * 1024,
                # Send only what the client sent: an Accept-Encoding the client did not ask
                # for would hand it a body it cannot read (bodies pass undecoded).
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        return self._session

    async def close(self) -> None:
        """Close every pooled connection."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
