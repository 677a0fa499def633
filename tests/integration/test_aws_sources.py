"""Native AWS sources against moto's server and the stand-ins, compared with the real aws CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.parse
from calendar import timegm
from datetime import datetime
from time import strptime

import pytest

from awstoken import (
    Command,
    Keeper,
    MemoryStorage,
    SourceError,
    TokenExpiredError,
    basic,
    basic_auth,
)
from awstoken._rotation.rotator import fetch_value
from awstoken.aws import ECR, EKS, RDS, CodeArtifact, ECRPublic
from tests.fixtures.aws_standins import StandIn, verify_presigned

pytestmark = pytest.mark.peer("moto")

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/awstoken-test"


def run_aws(aws_cli: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([aws_cli, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def signed_at(url: str) -> float:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return float(timegm(strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")))


def eks_url(token: str) -> str:
    assert token.startswith("k8s-aws-v1.")
    payload = token.removeprefix("k8s-aws-v1.")
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


# -- ECR (moto) -------------------------------------------------------------------------------


@pytest.mark.usefixtures("use_aws_env")
def test_ecr_reports_the_expiry_aws_reports(moto_ecr_expiry: datetime) -> None:
    fetched = ECR().fetch()
    assert base64.b64decode(fetched.token).decode() == f"AWS:{ACCOUNT}-auth-token"
    assert fetched.expires_at == moto_ecr_expiry.timestamp()


@pytest.mark.usefixtures("use_aws_env", "moto_ecr_expiry")
def test_ecr_registry_id_picks_the_registry() -> None:
    fetched = ECR("210987654321").fetch()
    assert base64.b64decode(fetched.token).decode() == "AWS:210987654321-auth-token"


@pytest.mark.usefixtures("use_aws_env")
def test_ecr_moto_default_expiry_of_2015_is_rejected_as_expired() -> None:
    source = ECR()
    assert source.fetch().expires_at == datetime.fromisoformat("2015-01-01T00:00:00+00:00").timestamp()
    with pytest.raises(TokenExpiredError, match="expired"):
        fetch_value("ecr", source, basic)


@pytest.mark.usefixtures("use_aws_env", "moto_ecr_expiry")
def test_ecr_creates_its_client_once() -> None:
    source = ECR()
    source.fetch()
    client = source._client()
    source.fetch()
    assert source._client() is client


@pytest.mark.usefixtures("use_aws_env")
def test_ecr_json_command_through_the_aws_cli_equals_the_native_source(
        aws_cli: str, moto_ecr_expiry: datetime) -> None:
    command = Command([aws_cli, "ecr", "get-authorization-token", "--output", "json"],
                      token_path="authorizationData[0].authorizationToken",
                      expiry_path="authorizationData[0].expiresAt")
    by_cli, cli_value = fetch_value("ecr", command, basic)
    by_sdk, sdk_value = fetch_value("ecr", ECR(), basic)
    assert cli_value == sdk_value == "Basic " + by_sdk.token
    assert by_cli.expires_at == by_sdk.expires_at == moto_ecr_expiry.timestamp()
    # The ngx_aws_token way (text output, no expiry) gives the same header value too.
    text = Command([aws_cli, "ecr", "get-authorization-token", "--query",
                    "authorizationData[0].authorizationToken", "--output", "text"])
    assert fetch_value("ecr", text, basic)[1] == sdk_value


# -- EKS and RDS (moto; signing is local) -----------------------------------------------------


@pytest.mark.usefixtures("use_aws_env")
def test_eks_token_is_a_presigned_get_caller_identity_signing_the_cluster(
        aws_env: dict[str, str], aws_cli: str) -> None:
    before = time.time()
    fetched = EKS("prod-cluster").fetch()
    url = eks_url(fetched.token)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Expires"] == ["60"]
    assert fetched.expires_at == signed_at(url) + 14 * 60
    assert before - 1 <= signed_at(url) <= time.time()
    # The signature verifies with the cluster header, and only with it (what STS checks).
    assert verify_presigned(url, {"x-k8s-aws-id": "prod-cluster"}, "sts", "us-east-1")
    assert not verify_presigned(url, {"x-k8s-aws-id": "other-cluster"}, "sts", "us-east-1")
    # Same shape as what `aws eks get-token` prints.
    cli = json.loads(run_aws(aws_cli, aws_env, "eks", "get-token", "--cluster-name",
                             "prod-cluster"))
    cli_url = eks_url(cli["status"]["token"])
    cli_query = urllib.parse.parse_qs(urllib.parse.urlsplit(cli_url).query)
    assert sorted(cli_query) == sorted(query)
    assert cli_query["X-Amz-SignedHeaders"] == query["X-Amz-SignedHeaders"]
    assert urllib.parse.urlsplit(cli_url)[:3] == urllib.parse.urlsplit(url)[:3]
    cli_expiry = datetime.fromisoformat(cli["status"]["expirationTimestamp"]).timestamp()
    assert abs(cli_expiry - fetched.expires_at) < 30


@pytest.mark.usefixtures("use_aws_env")
def test_eks_with_role_arn_signs_with_assumed_role_credentials() -> None:
    plain = urllib.parse.parse_qs(urllib.parse.urlsplit(eks_url(EKS("c").fetch().token)).query)
    assumed = urllib.parse.parse_qs(urllib.parse.urlsplit(
        eks_url(EKS("c", role_arn=ROLE).fetch().token)).query)
    assert plain["X-Amz-Credential"][0].startswith("testing/")
    assert "X-Amz-Security-Token" not in plain
    # moto's AssumeRole hands out temporary keys (ASIA...) with a session token.
    assert assumed["X-Amz-Credential"][0].startswith("ASIA")
    assert assumed["X-Amz-Security-Token"][0]


@pytest.mark.usefixtures("use_aws_env")
def test_rds_token_matches_the_aws_cli(aws_env: dict[str, str], aws_cli: str) -> None:
    fetched = RDS("db.example.internal", 5432, "app_user", region="eu-west-1").fetch()
    assert fetched.token.startswith("db.example.internal:5432/?Action=connect&DBUser=app_user&")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit("https://" + fetched.token).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert "/eu-west-1/rds-db/aws4_request" in query["X-Amz-Credential"][0]
    assert fetched.expires_at == signed_at("https://" + fetched.token) + 900
    cli = run_aws(aws_cli, aws_env, "rds", "generate-db-auth-token", "--hostname",
                  "db.example.internal", "--port", "5432", "--username", "app_user",
                  "--region", "eu-west-1").strip()
    cli_query = urllib.parse.parse_qs(urllib.parse.urlsplit("https://" + cli).query)
    assert cli.split("?")[0] == fetched.token.split("?")[0]
    assert sorted(cli_query) == sorted(query)
    assert cli_query["X-Amz-Expires"] == query["X-Amz-Expires"]


# -- CodeArtifact and ECR Public (stand-ins) -------------------------------------------------


@pytest.mark.usefixtures("use_aws_env")
def test_codeartifact_sends_a_signed_request_with_domain_owner_duration(
        codeartifact: StandIn) -> None:
    fetched = CodeArtifact("my-domain", domain_owner=ACCOUNT, duration=900).fetch()
    assert fetched.token == codeartifact.token
    assert fetched.expires_at == codeartifact.sent_expiry
    [request] = codeartifact.received
    assert request.path == "/v1/authorization-token"
    assert request.query == {"domain": ["my-domain"], "domain-owner": [ACCOUNT],
                             "duration": ["900"]}
    assert request.signed
    assert request.scope == ("testing", "us-east-1", "codeartifact")


@pytest.mark.usefixtures("use_aws_env")
def test_codeartifact_duration_zero_and_default(codeartifact: StandIn) -> None:
    CodeArtifact("d1", duration=0).fetch()
    CodeArtifact("d1").fetch()
    assert codeartifact.received[0].query == {"domain": ["d1"], "duration": ["0"]}
    assert codeartifact.received[1].query == {"domain": ["d1"]}


@pytest.mark.usefixtures("use_aws_env")
def test_codeartifact_cli_json_command_equals_the_native_source(
        codeartifact: StandIn, aws_cli: str) -> None:
    command = Command([aws_cli, "codeartifact", "get-authorization-token", "--domain",
                       "my-domain", "--domain-owner", ACCOUNT, "--duration-seconds", "3600",
                       "--output", "json"],
                      token_path="authorizationToken", expiry_path="expiration")
    transform = basic_auth("aws")
    by_cli, cli_value = fetch_value("pypi", command, transform)
    cli_expiry = codeartifact.sent_expiry
    by_sdk, sdk_value = fetch_value("pypi", CodeArtifact("my-domain", domain_owner=ACCOUNT,
                                                         duration=3600), transform)
    assert cli_value == sdk_value
    assert base64.b64decode(sdk_value.removeprefix("Basic ")).decode() == (
        f"aws:{codeartifact.token}")
    assert by_cli.expires_at == cli_expiry
    assert by_sdk.expires_at == codeartifact.sent_expiry
    cli_request, sdk_request = codeartifact.received
    assert cli_request.query == sdk_request.query
    assert cli_request.signed
    assert sdk_request.signed


@pytest.mark.usefixtures("use_aws_env")
def test_ecr_public_speaks_json_1_1_in_us_east_1(ecr_public: StandIn, aws_cli: str) -> None:
    fetched = ECRPublic().fetch()
    assert fetched.token == ecr_public.token
    assert fetched.expires_at == ecr_public.sent_expiry
    [request] = ecr_public.received
    assert request.headers["x-amz-target"] == "SpencerFrontendService.GetAuthorizationToken"
    assert request.headers["content-type"] == "application/x-amz-json-1.1"
    assert request.signed
    assert request.scope == ("testing", "us-east-1", "ecr-public")
    command = Command([aws_cli, "ecr-public", "get-authorization-token", "--region",
                       "us-east-1", "--output", "json"],
                      token_path="authorizationData.authorizationToken",
                      expiry_path="authorizationData.expiresAt")
    assert fetch_value("p", command, basic)[1] == fetch_value("p", ECRPublic(), basic)[1]


@pytest.mark.usefixtures("use_aws_env")
@pytest.mark.parametrize("service", ["codeartifact", "ecr-public"])
def test_throttling_is_a_source_error_naming_service_and_code(
        service: str, request: pytest.FixtureRequest) -> None:
    standin: StandIn = request.getfixturevalue("codeartifact" if service == "codeartifact"
                                               else "ecr_public")
    standin.mode = "throttle"
    source = CodeArtifact("my-domain") if service == "codeartifact" else ECRPublic()
    with pytest.raises(SourceError) as caught:
        source.fetch()
    message = str(caught.value)
    assert message.startswith(f"{service} GetAuthorizationToken failed: ThrottlingException")
    assert "throttled by AWS" in message
    assert standin.token not in message
    assert "testing" not in message


@pytest.mark.usefixtures("use_aws_env")
def test_access_denied_names_the_code_and_status(codeartifact: StandIn) -> None:
    codeartifact.mode = "denied"
    with pytest.raises(SourceError, match=r"AccessDeniedException \(HTTP 403\): User: arn"):
        CodeArtifact("my-domain").fetch()


@pytest.mark.usefixtures("use_aws_env")
def test_a_throttled_refresh_keeps_the_previous_token(codeartifact: StandIn) -> None:
    keeper = Keeper(MemoryStorage())
    rotator = keeper.rotator("pypi", CodeArtifact("my-domain"), basic_auth("aws"))
    first = rotator.refresh().value
    codeartifact.mode = "throttle"
    with pytest.raises(SourceError):
        rotator.refresh()
    assert keeper.token("pypi") == first
    record = keeper.record("pypi")
    assert record is not None
    assert record.failures == 1
    assert record.error is not None
    assert "ThrottlingException" in record.error
    assert codeartifact.token not in record.error


@pytest.mark.usefixtures("use_aws_env")
def test_missing_credentials_is_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceError, match="no AWS credentials found"):
        ECR().fetch()


@pytest.mark.usefixtures("use_aws_env")
def test_unreachable_endpoint_is_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.ports import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_CODEARTIFACT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceError, match="codeartifact GetAuthorizationToken: "
                                          "EndpointConnectionError"):
        CodeArtifact("my-domain", timeout=5).fetch()


@pytest.mark.usefixtures("use_aws_env")
def test_unknown_profile_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="profile 'nope' is not in the AWS config files"):
        ECR(profile="nope").fetch()
