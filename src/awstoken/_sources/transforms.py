"""Transforms: raw token to header value, and the validation every header value passes."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from .._errors import TokenValueError

Transform = Callable[[str], str]
"""A function from the raw token to the value that goes into the header."""

#: Real ECR tokens exceed 4 KiB; 16 KiB leaves room while refusing runaway output.
MAX_VALUE_LENGTH = 16 * 1024

# Control characters (C0, DEL, C1) would let a value break out of its header line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_value(value: object, what: str = "token") -> str:
    """Return ``value`` if it is fit for an HTTP header, else raise :class:`TokenValueError`.

    ``what`` names the token in the message; the value itself never appears in it.
    """
    if not isinstance(value, str):
        raise TokenValueError(f"{what}: the value must be a string, not {type(value).__name__}")
    if not value:
        raise TokenValueError(f"{what}: the value is empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise TokenValueError(
            f"{what}: the value is {len(value)} characters long, over the limit of "
            f"{MAX_VALUE_LENGTH}")
    match = _CONTROL.search(value)
    if match is not None:
        raise TokenValueError(
            f"{what}: the value contains a control character ({ord(match.group()):#04x}) "
            f"at position {match.start()}; refusing it to prevent header injection")
    if value != value.strip():
        raise TokenValueError(f"{what}: the value starts or ends with whitespace")
    return value


def identity(token: str) -> str:
    """The raw token, unchanged."""
    return token


def template(fmt: str) -> Transform:
    """A transform that puts the token into ``fmt`` at ``{token}``, e.g. ``"Basic {token}"``."""
    if "{token}" not in fmt:
        raise TokenValueError(f"format {fmt!r} has no '{{token}}' placeholder")
    head, _, tail = fmt.partition("{token}")
    if "{token}" in tail:
        raise TokenValueError(f"format {fmt!r} has more than one '{{token}}' placeholder")

    def apply(token: str) -> str:
        return head + token + tail

    apply.__name__ = f"template({fmt!r})"
    return apply


def bearer(token: str) -> str:
    """``Bearer <token>``."""
    return "Bearer " + token


def basic(token: str) -> str:
    """``Basic <token>``, for tokens that are already base64 ``user:password`` (ECR)."""
    return "Basic " + token


def basic_auth(user: str) -> Transform:
    """Basic auth with ``user`` and the token as password (CodeArtifact: ``basic_auth("aws")``)."""
    if ":" in user or _CONTROL.search(user):
        raise TokenValueError(f"basic auth user {user!r} must not contain ':' or control characters")

    def apply(token: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode("ascii")

    apply.__name__ = f"basic_auth({user!r})"
    return apply


def as_transform(transform: Transform | str | None) -> Transform:
    """Accept a callable, a ``"{token}"`` format string or None (the raw token)."""
    if transform is None:
        return identity
    if isinstance(transform, str):
        return template(transform)
    if not callable(transform):
        raise TokenValueError(f"transform must be callable or a format string, not "
                              f"{type(transform).__name__}")
    return transform
