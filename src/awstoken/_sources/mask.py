"""Masking token values out of text that goes into errors, logs and status output.

A command's standard error (a source's or a hook's) is quoted in its error message, which
reaches the log, ``/readyz`` and ``awstoken status``: whatever token it holds must be masked
there. The rotator knows the token it is about to replace and sets it for the duration of
a fetch (:func:`masking`), so a source can mask it before truncating its message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
from collections.abc import Iterable, Iterator

#: Shorter strings are not masked: ``"aws"`` would mask half of every message.
MIN_SECRET = 8
#: The most of a stderr line quoted in an error.
MAX_LINE = 200
MASK = "***"

_known: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "awstoken.known_secrets", default=frozenset())


def secret_parts(value: str | None) -> set[str]:
    """``value`` and the secret parts inside it, each at least :data:`MIN_SECRET` long.

    The parts: the words of the value (the token after ``Basic ``/``Bearer ``) and, for a
    ``Basic`` value, the decoded ``user:password`` and the password alone.
    """
    if not value:
        return set()
    parts = {value, value.strip(), *value.split()}
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            pass
        else:
            parts.update((decoded, decoded.partition(":")[2]))
    return {part for part in parts if len(part) >= MIN_SECRET}


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its parts, see :func:`secret_parts`) replaced by ``***``."""
    found: set[str] = set(_known.get())
    for secret in secrets:
        found |= secret_parts(secret)
    for secret in sorted(found, key=len, reverse=True):  # longest first: parts stay masked
        text = text.replace(secret, MASK)
    return text


def first_line(stderr: bytes, secrets: Iterable[str | None] = ()) -> str:
    """``": <first non-empty line>"`` of ``stderr``, masked, then cut to :data:`MAX_LINE`."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line:
            # Mask before cutting: a cut token would no longer match its mask.
            line = mask(line, secrets)
            return ": " + (line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "...")
    return ""


@contextlib.contextmanager
def masking(secrets: Iterable[str | None]) -> Iterator[None]:
    """Mask ``secrets`` (and their parts) in every :func:`mask` call of this context."""
    known = frozenset(part for secret in secrets for part in secret_parts(secret))
    reset = _known.set(_known.get() | known)
    try:
        yield
    finally:
        _known.reset(reset)
