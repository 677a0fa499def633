"""The source of a token, one options class per ``source = "..."``.

Each class declares the keys its source reads in a ``[tokens.NAME]`` table (a field per key,
see :mod:`.reading`); ``source`` names the class. The native sources share ``region``,
``profile`` and ``role_arn`` (:class:`AwsOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from . import checks
from .reading import MISSING, Table, integer, read_by, setting, string, value

SourceType = Literal["command", "ecr", "ecr-public", "codeartifact", "eks", "rds"]


def _command(table: Table, name: str) -> Any:
    others = "" if "source" in table.data else ", or a source = " + " | ".join(SOURCES[1:])
    return table.get(name, checks.command, "a command line (string) or an argv array of "
                     "non-empty strings" + others, required=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandOptions:
    """``source = "command"`` (the default): a command prints the token, or JSON holding it."""

    source: ClassVar[SourceType] = "command"
    #: A shell line or an argv; a file must give it (None only in settings made in code,
    #: where building the source then fails naming the key).
    command: str | tuple[str, ...] | None = setting(None, _command)
    token_path: str | None = setting(None, value(
        checks.path_check, "a JSON path like 'authorizationData[0].authorizationToken'"))
    expiry_path: str | None = setting(None, value(
        checks.path_check, "a JSON path like 'authorizationData[0].expiresAt'"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsOptions:
    """What every native source accepts (botocore's credential chain picks the rest)."""

    region: str | None = setting(None, string(pattern=checks.REGION,
                                              expected='an AWS region like "us-east-1"'))
    profile: str | None = setting(None, string(expected="an AWS profile name"))
    role_arn: str | None = setting(None, string(
        pattern=checks.ROLE_ARN,
        expected='an IAM role ARN like "arn:aws:iam::123456789012:role/name"'))


_ACCOUNT_ID = string(pattern=checks.ACCOUNT, expected=checks.ACCOUNT_EXPECTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class ECROptions(AwsOptions):
    """``source = "ecr"``: an ECR authorization token."""

    source: ClassVar[SourceType] = "ecr"
    registry_id: str | None = setting(None, _ACCOUNT_ID)


@dataclass(frozen=True, slots=True, kw_only=True)
class ECRPublicOptions(AwsOptions):
    """``source = "ecr-public"``: an ECR Public authorization token (region us-east-1)."""

    source: ClassVar[SourceType] = "ecr-public"


def _session_duration(table: Table, name: str) -> int | Any:
    seconds = table.duration(name, positive=False)
    if seconds is MISSING:
        return MISSING
    if seconds != 0 and not 900 <= seconds <= 43200:
        return table.error(name, "expected 0 (the role session's remaining time) or 15m to 12h, "
                                 f"got {table.data[name]!r}")
    if seconds != int(seconds):
        return table.error(name, "expected a whole number of seconds")
    return int(seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeArtifactOptions(AwsOptions):
    """``source = "codeartifact"``: a CodeArtifact authorization token."""

    source: ClassVar[SourceType] = "codeartifact"
    domain: str = field(metadata=read_by(string(
        required=True, pattern=checks.DOMAIN,
        expected="a CodeArtifact domain name (2 to 50 lowercase letters, digits and '-')")))
    domain_owner: str | None = setting(None, _ACCOUNT_ID)
    duration: int | None = setting(None, _session_duration)  # seconds; None: AWS's default


@dataclass(frozen=True, slots=True, kw_only=True)
class EKSOptions(AwsOptions):
    """``source = "eks"``: a bearer token for an EKS cluster's API server."""

    source: ClassVar[SourceType] = "eks"
    cluster: str = field(metadata=read_by(string(
        required=True, pattern=checks.CLUSTER,
        expected="an EKS cluster name (letters, digits, '-', '_')")))


@dataclass(frozen=True, slots=True, kw_only=True)
class RDSOptions(AwsOptions):
    """``source = "rds"``: an IAM authentication token for an RDS database."""

    source: ClassVar[SourceType] = "rds"
    host: str = field(metadata=read_by(string(
        required=True, pattern=checks.HOST, expected="a database host name (no scheme, no port)")))
    port: int = field(metadata=read_by(integer(1, 65535, required=True)))
    user: str = field(metadata=read_by(string(required=True, expected="a database user name")))


#: The options of any source.
SourceOptions = (CommandOptions | ECROptions | ECRPublicOptions | CodeArtifactOptions
                 | EKSOptions | RDSOptions)

#: Each source's options class, by the name ``source = "..."`` gives it.
OPTIONS: dict[str, type[SourceOptions]] = {
    cls.source: cls for cls in (CommandOptions, ECROptions, ECRPublicOptions,
                                CodeArtifactOptions, EKSOptions, RDSOptions)}
SOURCES: tuple[SourceType, ...] = tuple(cls.source for cls in OPTIONS.values())
