"""A read-only keyring backend: pip, uv, twine and poetry get index credentials from awstoken.

Installed with the extra ``awstoken[keyring]`` and found by keyring through the
``keyring.backends`` entry point. It answers ``get_credential`` / ``get_password`` only for
the index URLs a token lists in ``indexes = [...]`` of the configuration file named by
``AWSTOKEN_CONFIG`` (and the host of a CodeArtifact source with ``domain_owner`` and
``region``): the longest matching URL prefix, else the same scheme, host and port. The user
is the token's ``basic_user`` (``aws`` by default) and the password the token. Everything
else gets None, so other backends are asked; its priority is below any real backend's and
it never stores or deletes anything.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from keyring.backend import KeyringBackend
from keyring.credentials import Credential, SimpleCredential
from keyring.errors import PasswordDeleteError, PasswordSetError

from .._errors import AwstokenError
from .common import credentials, index_token, load_settings, obtain

if TYPE_CHECKING:  # keyring imports this module in every process that uses it: no loader here
    from .._config.settings import Settings

log = logging.getLogger("awstoken")

#: Below SecretService/KWallet (5) and keyrings.alt (0.5 and up), above keyring's fail
#: backend (0): consulted last by keyring's chainer, never preferred over the user's own.
PRIORITY = 0.1

_settings: Settings | None = None
_lock = threading.Lock()


def _load() -> Settings | None:
    global _settings
    with _lock:
        if _settings is None:
            try:
                _settings = load_settings(None)
            except AwstokenError as exc:
                log.warning("awstoken keyring: %s", exc)
                return None
        return _settings


class AwstokenKeyring(KeyringBackend):
    """Index credentials from awstoken's storage (read-only)."""

    priority = PRIORITY

    def _lookup(self, service: str, username: str | None) -> tuple[str, str] | None:
        settings = _load()
        if settings is None:
            return None
        name = index_token(settings, service)
        if name is None:
            return None
        try:
            answer = obtain(settings, name)
        except AwstokenError as exc:  # NotFound, or a storage/config problem: say why
            log.warning("awstoken keyring: %s: %s", service, exc)
            return None
        user, secret = credentials(answer.value, settings.tokens[name])
        if username is not None and username != user:
            return None
        return user, secret

    def get_password(self, service: str, username: str) -> str | None:
        found = self._lookup(service, username)
        return None if found is None else found[1]

    def get_credential(self, service: str, username: str | None) -> Credential | None:
        found = self._lookup(service, username)
        return None if found is None else SimpleCredential(*found)

    def set_password(self, service: str, username: str, password: str) -> None:
        raise PasswordSetError("awstoken's keyring is read-only: awstoken keeps the token fresh")

    def delete_password(self, service: str, username: str) -> None:
        raise PasswordDeleteError("awstoken's keyring is read-only")
