"""Upstream TLS: one context for every route's connections."""

from __future__ import annotations

import ssl

from .._config.settings import ServerSettings
from .._errors import ConfigError


def tls_context(settings: ServerSettings) -> ssl.SSLContext:
    """Verified TLS by default (system CAs, plus ``ca_file`` when given); off only when asked.

    Raises :class:`awstoken.ConfigError` when ``ca_file`` cannot be loaded.
    """
    context = ssl.create_default_context()
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    _load_ca_file(context, settings)
    return context


def check_tls(settings: ServerSettings) -> None:
    """Raise what :func:`tls_context` raises, without loading the system's CA certificates
    (40-60 ms of CPU: ``serve`` checks before its workers start, and each builds its own)."""
    if settings.verify_tls:
        _load_ca_file(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), settings)


def _load_ca_file(context: ssl.SSLContext, settings: ServerSettings) -> None:
    if settings.ca_file:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.ca_file {settings.ca_file!r}: cannot load it "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
