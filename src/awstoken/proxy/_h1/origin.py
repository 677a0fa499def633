"""Where an upstream lives (``Origin``) and how an exchange with it fails (``UpstreamError``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream lives: connect address, TLS, and the ``Host`` header value."""

    tls: bool
    host: str
    port: int
    host_header: str
    url: str  # scheme://host[:port], the pool's key

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        return cls(tls, host, port, header, f"{'https' if tls else 'http'}://{header}")


class UpstreamError(Exception):
    """The upstream exchange failed: ``kind`` is connect, tls, timeout, protocol or body."""

    def __init__(self, kind: str, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.before_response = before_response  # no byte of an answer arrived


__all__ = ["Origin", "UpstreamError"]
