"""The exception hierarchy: every error awstoken raises derives from AwstokenError.

    AwstokenError
    ├── SourceError            a source could not produce a token
    │   ├── CommandError       a command exited non-zero, could not start, or printed garbage
    │   └── CommandTimeout     a command ran past its timeout (its process group was killed)
    ├── TokenValueError        a token or header value is empty, too long or has control characters
    ├── TokenExpiredError      a freshly fetched token is already expired
    ├── TokenUnavailableError  a client needs a token and none is usable (missing or expired)
    ├── HookError              an on-rotate hook (file sink, command) failed; the token stays
    │   └── HookTimeout        an on-rotate command ran past its timeout (its group was killed)
    ├── StorageError           storage could not be read or written
    └── ConfigError            a configuration file or option is invalid
"""

from __future__ import annotations


class AwstokenError(Exception):
    """Base class of every error raised by awstoken."""


class SourceError(AwstokenError):
    """A token source failed to produce a token."""


class CommandError(SourceError):
    """A command failed: it exited non-zero, could not start, or printed unusable output."""

    def __init__(self, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class CommandTimeout(CommandError):
    """A command ran past its timeout; its whole process group was killed."""


class TokenValueError(AwstokenError, ValueError):
    """A token or header value is invalid (empty, too long, or contains control characters)."""


class TokenExpiredError(AwstokenError):
    """A token was already expired when it was fetched."""


class TokenUnavailableError(AwstokenError):
    """No usable token: never fetched, or expired (the message says which, and why)."""


class HookError(AwstokenError):
    """An on-rotate hook failed (a file sink could not be written, a command failed).

    The token itself was stored before any hook ran and stays in use.
    """


class HookTimeout(HookError):
    """An on-rotate command ran past its timeout; its whole process group was killed."""


class StorageError(AwstokenError):
    """Token storage could not be read or written."""


class ConfigError(AwstokenError, ValueError):
    """A configuration file or option is invalid."""
