"""Native AWS token sources (extra ``awstoken[aws]``): botocore, no AWS CLI.

Each source returns the raw token and its expiry as AWS reports it::

    from awstoken.aws import ECR, CodeArtifact
    keeper.rotate("ecr", ECR(region="eu-west-1"), awstoken.basic)
    keeper.rotate("pypi", CodeArtifact("my-domain", domain_owner="123456789012"),
                  awstoken.basic_auth("aws"))

Credentials come from botocore's standard chain (environment, profile, SSO, web identity,
container and instance metadata); ``profile`` picks a profile, ``region`` the region, and
``role_arn`` a role to assume first (botocore refreshes the role session before it expires).
Each source creates its client on first use and reuses it. Every failure, including
throttling, raises :class:`awstoken.SourceError` naming the service, the operation and the
AWS error code, never a credential or a token.

botocore is imported when a source first runs, so ``import awstoken.aws`` stays cheap.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import threading
import urllib.parse
from calendar import timegm
from datetime import datetime, timedelta
from time import strptime
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import ConfigError, SourceError
from ._sources.command import Fetched

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = ["ECR", "EKS", "RDS", "CodeArtifact", "ECRPublic", "botocore_available",
           "check_codeartifact_duration"]

#: How long an EKS token is used (``aws eks get-token`` says 14 minutes; EKS accepts 15).
_EKS_TOKEN_LIFETIME = 14 * 60.0
#: RDS IAM authentication tokens are valid for 15 minutes.
_RDS_TOKEN_LIFETIME = 15 * 60.0
#: CodeArtifact accepts 0 (the role session's remaining time) or 900 s to 12 h.
_CODEARTIFACT_MIN_DURATION = 900
_CODEARTIFACT_MAX_DURATION = 12 * 3600

_EKS_PREFIX = "k8s-aws-v1."
_EKS_HEADER = "x-k8s-aws-id"
_THROTTLED = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "SlowDown", "RequestThrottled",
    "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "BandwidthLimitExceeded", "LimitExceededException", "PriorRequestNotComplete",
    "EC2ThrottledException"})
# Long base64-looking runs in an AWS message could be credentials or tokens: never repeat them.
_SECRETISH = re.compile(r"[A-Za-z0-9+/=_-]{40,}")
_ACCOUNT = re.compile(r"\d{12}")


def botocore_available() -> bool:
    """True when botocore can be imported (the ``awstoken[aws]`` extra is installed)."""
    return importlib.util.find_spec("botocore") is not None


class _AwsSource:
    """Shared plumbing: one lazily created botocore client, and error translation."""

    kind: ClassVar[str]  # the source's name in configuration files
    service: ClassVar[str]
    operation: ClassVar[str]

    def __init__(self, *, region: str | None = None, profile: str | None = None,
                 role_arn: str | None = None, timeout: float | None = None) -> None:
        if not botocore_available():
            raise ConfigError(f"the {self.kind} source needs botocore: "
                              "pip install 'awstoken[aws]'")
        for what, value in (("region", region), ("profile", profile), ("role_arn", role_arn)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{self.kind}: {what} must be a non-empty string")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, int | float) or timeout <= 0):
            raise ConfigError(f"{self.kind}: timeout must be a positive number of seconds")
        self.region = region
        self.profile = profile
        self.role_arn = role_arn
        self.timeout = None if timeout is None else float(timeout)
        self._client_obj: BaseClient | None = None
        self._lock = threading.Lock()

    # -- the client --------------------------------------------------------------------------

    def _client(self) -> Any:
        client = self._client_obj
        if client is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = self._guarded(self._create_client)
                client = self._client_obj
        return client

    def _create_client(self) -> BaseClient:
        import botocore.config
        import botocore.session

        from ._version import version

        session = botocore.session.Session(profile=self.profile)
        if self.role_arn is not None:
            _assume_role(session, self.profile, self.region, self.role_arn)
        elif session.get_credentials() is None:
            raise SourceError(f"{self.service}: no AWS credentials found (environment, "
                              f"profile{_for_profile(self.profile)}, SSO or instance metadata)")
        config = botocore.config.Config(user_agent_extra=f"awstoken/{version()}")
        if self.timeout is not None:
            config = config.merge(botocore.config.Config(connect_timeout=self.timeout,
                                                         read_timeout=self.timeout))
        return session.create_client(self.service, region_name=self.region, config=config)

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self) -> Fetched:
        """Fetch a token now; raise :class:`awstoken.SourceError` on any failure."""
        client = self._client()
        fetched: Fetched = self._guarded(lambda: self._fetch(client))
        return fetched

    def _fetch(self, client: Any) -> Fetched:
        raise NotImplementedError

    def _guarded(self, call: Any) -> Any:
        import botocore.exceptions as bce

        try:
            return call()
        except bce.ClientError as exc:
            raise SourceError(_client_error(self.service, self.operation, exc)) from None
        except bce.NoRegionError:
            raise SourceError(f"{self.service} {self.operation}: no AWS region: set region, "
                              "AWS_REGION or a region in the AWS config file") from None
        except bce.NoCredentialsError:
            raise SourceError(f"{self.service} {self.operation}: no AWS credentials found "
                              f"(environment, profile{_for_profile(self.profile)}, SSO or "
                              "instance metadata)") from None
        except bce.ProfileNotFound:
            raise SourceError(f"{self.service}: AWS profile {self.profile!r} is not in the AWS "
                              "config files") from None
        except bce.BotoCoreError as exc:
            raise SourceError(f"{self.service} {self.operation}: {type(exc).__name__}: "
                              f"{_safe(str(exc))}") from None

    def _options(self) -> list[str]:
        return [f"{k}={v!r}" for k, v in (("region", self.region), ("profile", self.profile),
                                          ("role_arn", self.role_arn)) if v is not None]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._options())})"


class ECR(_AwsSource):
    """Amazon ECR: GetAuthorizationToken (valid 12 hours).

    The raw token is the base64 ``AWS:password`` string that Docker's Basic auth expects, so
    use it with :func:`awstoken.basic`. ``registry_id`` (an account id) picks the registry;
    by default it is the caller's own.
    """

    kind = "ecr"
    service = "ecr"
    operation = "GetAuthorizationToken"

    def __init__(self, registry_id: str | None = None, *, region: str | None = None,
                 profile: str | None = None, role_arn: str | None = None,
                 timeout: float | None = None) -> None:
        if registry_id is not None and (not isinstance(registry_id, str)
                                        or not _ACCOUNT.fullmatch(registry_id)):
            raise ConfigError("ecr: registry_id must be a 12-digit AWS account id (a string)")
        super().__init__(region=region, profile=profile, role_arn=role_arn, timeout=timeout)
        self.registry_id = registry_id

    def _fetch(self, client: Any) -> Fetched:
        kwargs = {"registryIds": [self.registry_id]} if self.registry_id else {}
        data = client.get_authorization_token(**kwargs).get("authorizationData") or []
        if not data:
            raise SourceError("ecr GetAuthorizationToken: the answer has no authorizationData")
        return _fetched(self, data[0], "authorizationToken", "expiresAt")

    def _options(self) -> list[str]:
        head = [repr(self.registry_id)] if self.registry_id else []
        return head + super()._options()


class ECRPublic(_AwsSource):
    """Amazon ECR Public: ecr-public GetAuthorizationToken (valid 12 hours, us-east-1)."""

    kind = "ecr-public"
    service = "ecr-public"
    operation = "GetAuthorizationToken"

    def __init__(self, *, region: str | None = "us-east-1", profile: str | None = None,
                 role_arn: str | None = None, timeout: float | None = None) -> None:
        super().__init__(region=region or "us-east-1", profile=profile, role_arn=role_arn,
                         timeout=timeout)

    def _fetch(self, client: Any) -> Fetched:
        data = client.get_authorization_token().get("authorizationData")
        if not data:
            raise SourceError("ecr-public GetAuthorizationToken: the answer has no "
                              "authorizationData")
        return _fetched(self, data, "authorizationToken", "expiresAt")


class CodeArtifact(_AwsSource):
    """AWS CodeArtifact: GetAuthorizationToken for ``domain``.

    ``duration`` is the token lifetime in seconds: 900 to 43200 (12 hours), or 0 for the
    remaining time of the role session; None leaves AWS's default (12 hours). Use the token
    with ``awstoken.basic_auth("aws")`` (pip, twine) or :func:`awstoken.bearer` (npm).
    """

    kind = "codeartifact"
    service = "codeartifact"
    operation = "GetAuthorizationToken"

    def __init__(self, domain: str, *, domain_owner: str | None = None,
                 duration: float | timedelta | None = None, region: str | None = None,
                 profile: str | None = None, role_arn: str | None = None,
                 timeout: float | None = None) -> None:
        if not isinstance(domain, str) or not domain:
            raise ConfigError("codeartifact: domain must be a non-empty string")
        if domain_owner is not None and (not isinstance(domain_owner, str)
                                         or not _ACCOUNT.fullmatch(domain_owner)):
            raise ConfigError("codeartifact: domain_owner must be a 12-digit AWS account id "
                              "(a string)")
        super().__init__(region=region, profile=profile, role_arn=role_arn, timeout=timeout)
        self.domain = domain
        self.domain_owner = domain_owner
        self.duration = check_codeartifact_duration(duration)

    def _fetch(self, client: Any) -> Fetched:
        kwargs: dict[str, Any] = {"domain": self.domain}
        if self.domain_owner is not None:
            kwargs["domainOwner"] = self.domain_owner
        if self.duration is not None:
            kwargs["durationSeconds"] = self.duration
        return _fetched(self, client.get_authorization_token(**kwargs), "authorizationToken",
                        "expiration")

    def _options(self) -> list[str]:
        extra = [f"{k}={v!r}" for k, v in (("domain_owner", self.domain_owner),
                                          ("duration", self.duration)) if v is not None]
        return [repr(self.domain), *extra, *super()._options()]


def check_codeartifact_duration(duration: float | timedelta | None) -> int | None:
    """Validate a CodeArtifact token duration; return whole seconds (or None)."""
    if duration is None:
        return None
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
            or seconds != int(seconds)):
        raise ConfigError("codeartifact: duration must be a whole number of seconds")
    value = int(seconds)
    if value != 0 and not _CODEARTIFACT_MIN_DURATION <= value <= _CODEARTIFACT_MAX_DURATION:
        raise ConfigError(f"codeartifact: duration must be 0 (the role session's remaining time) "
                          f"or {_CODEARTIFACT_MIN_DURATION} to {_CODEARTIFACT_MAX_DURATION} "
                          f"seconds, not {value}")
    return value


class EKS(_AwsSource):
    """Amazon EKS: the bearer token that ``aws eks get-token`` makes for ``cluster``.

    It is ``k8s-aws-v1.`` and the base64url of a pre-signed STS GetCallerIdentity URL that
    signs the ``x-k8s-aws-id: <cluster>`` header. Nothing is sent to AWS: signing is local.
    The token is used for 14 minutes from its signing time (EKS accepts 15).
    """

    kind = "eks"
    service = "sts"
    operation = "GetCallerIdentity (EKS token)"

    def __init__(self, cluster: str, *, region: str | None = None, profile: str | None = None,
                 role_arn: str | None = None, timeout: float | None = None) -> None:
        if not isinstance(cluster, str) or not cluster:
            raise ConfigError("eks: cluster must be a non-empty string")
        super().__init__(region=region, profile=profile, role_arn=role_arn, timeout=timeout)
        self.cluster = cluster

    def _create_client(self) -> BaseClient:
        client = super()._create_client()
        # As `aws eks get-token` does: carry the cluster name from the call parameters into
        # the request context, then into a header before signing, so the URL signs it.
        client.meta.events.register("provide-client-params.sts.GetCallerIdentity", _keep_k8s_id)
        client.meta.events.register("before-sign.sts.GetCallerIdentity", _sign_k8s_id)
        return client

    def _fetch(self, client: Any) -> Fetched:
        url = client.generate_presigned_url("get_caller_identity",
                                            Params={_EKS_HEADER: self.cluster}, ExpiresIn=60,
                                            HttpMethod="GET")
        token = _EKS_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
        return Fetched(token, _signed_at(url, self) + _EKS_TOKEN_LIFETIME)

    def _options(self) -> list[str]:
        return [repr(self.cluster), *super()._options()]


def _keep_k8s_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    if _EKS_HEADER in params:
        context[_EKS_HEADER] = params.pop(_EKS_HEADER)


def _sign_k8s_id(request: Any, **_: Any) -> None:
    if _EKS_HEADER in request.context:
        request.headers[_EKS_HEADER] = request.context[_EKS_HEADER]


class RDS(_AwsSource):
    """Amazon RDS / Aurora IAM database authentication token (valid 15 minutes).

    Signing is local (nothing is sent to AWS). Use the token as the database password.
    """

    kind = "rds"
    service = "rds"
    operation = "generate-db-auth-token"

    def __init__(self, host: str, port: int, user: str, *, region: str | None = None,
                 profile: str | None = None, role_arn: str | None = None,
                 timeout: float | None = None) -> None:
        if not isinstance(host, str) or not host or "/" in host or ":" in host:
            raise ConfigError("rds: host must be a host name without scheme or port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("rds: port must be an integer from 1 to 65535")
        if not isinstance(user, str) or not user:
            raise ConfigError("rds: user must be a non-empty string")
        super().__init__(region=region, profile=profile, role_arn=role_arn, timeout=timeout)
        self.host = host
        self.port = port
        self.user = user

    def _fetch(self, client: Any) -> Fetched:
        region = self.region or client.meta.region_name
        token = client.generate_db_auth_token(DBHostname=self.host, Port=self.port,
                                              DBUsername=self.user, Region=region)
        return Fetched(token, _signed_at(token, self) + _RDS_TOKEN_LIFETIME)

    def _options(self) -> list[str]:
        return [repr(self.host), repr(self.port), repr(self.user), *super()._options()]


# -- helpers -------------------------------------------------------------------------------


def _assume_role(session: Any, profile: str | None, region: str | None, role_arn: str) -> None:
    """Make ``session`` use refreshable credentials of ``role_arn``, assumed with the chain's."""
    import botocore.credentials as bcc
    import botocore.session

    base = botocore.session.Session(profile=profile)
    source = base.get_credentials()
    if source is None:
        raise SourceError(f"sts AssumeRole: no AWS credentials found to assume {role_arn} "
                          f"with (environment, profile{_for_profile(profile)}, SSO or instance "
                          "metadata)")

    def sts_client(service: str, **kwargs: Any) -> Any:
        return base.create_client(service, region_name=region, **kwargs)

    fetcher = bcc.AssumeRoleCredentialFetcher(
        client_creator=sts_client, source_credentials=source, role_arn=role_arn,
        extra_args={"RoleSessionName": "awstoken"})
    credentials = bcc.DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials,
                                                     method="assume-role")

    class _RoleProvider(bcc.CredentialProvider):
        METHOD = "assume-role"
        CANONICAL_NAME = "awstoken-assume-role"

        def load(self) -> Any:
            return credentials

    session.register_component("credential_provider", bcc.CredentialResolver([_RoleProvider()]))


def _fetched(source: _AwsSource, data: Any, token_key: str, expiry_key: str) -> Fetched:
    what = f"{source.service} {source.operation}"
    token = data.get(token_key) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise SourceError(f"{what}: the answer has no {token_key}")
    expiry = data.get(expiry_key)
    if not isinstance(expiry, datetime):
        raise SourceError(f"{what}: the answer has no {expiry_key}")
    return Fetched(token, expiry.timestamp())


def _signed_at(url: str, source: _AwsSource) -> float:
    """The X-Amz-Date of a pre-signed URL, as epoch seconds: the token's lifetime starts there."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(
        url if "://" in url else "https://" + url).query)
    try:
        return float(timegm(strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")))
    except (KeyError, IndexError, ValueError):
        raise SourceError(f"{source.service} {source.operation}: the signed URL has no "
                          "valid X-Amz-Date") from None


def _client_error(service: str, operation: str, exc: Any) -> str:
    error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
    code = str(error.get("Code") or "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    op = getattr(exc, "operation_name", None) or operation
    head = f"{service} {op} failed: {code}" + (f" (HTTP {status})" if status else "")
    if code in _THROTTLED:
        head += ", throttled by AWS"
    message = _safe(str(error.get("Message") or ""))
    return f"{head}: {message}" if message else head


def _safe(text: str) -> str:
    """First line of an AWS message, without anything that looks like a credential or token."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    line = _SECRETISH.sub("[redacted]", line)
    return line if len(line) <= 200 else line[:197] + "..."


def _for_profile(profile: str | None) -> str:
    return f" {profile!r}" if profile else ""
