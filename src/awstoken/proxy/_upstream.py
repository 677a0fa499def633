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
    if settings.ca_file:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.ca_file {settings.ca_file!r}: cannot load it "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
    return context
