"""Native source options are checked when the source is built, before any AWS call."""

from __future__ import annotations

from datetime import timedelta

import pytest

from awstoken import ConfigError
from awstoken.aws import ECR, EKS, RDS, CodeArtifact, ECRPublic, check_codeartifact_duration


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ECR("12345"), "ecr: registry_id must be a 12-digit AWS account id"),
    (lambda: ECR(region=""), "ecr: region must be a non-empty string"),
    (lambda: ECR(timeout=0), "ecr: timeout must be a positive number of seconds"),
    (lambda: CodeArtifact(""), "codeartifact: domain must be a non-empty string"),
    (lambda: CodeArtifact("d", domain_owner="x"), "domain_owner must be a 12-digit"),
    (lambda: CodeArtifact("d", duration=600), "0 .* or 900 to 43200 seconds, not 600"),
    (lambda: CodeArtifact("d", duration=43201), "not 43201"),
    (lambda: CodeArtifact("d", duration=1000.5), "whole number of seconds"),
    (lambda: EKS(""), "eks: cluster must be a non-empty string"),
    (lambda: RDS("db:5432", 5432, "u"), "rds: host must be a host name"),
    (lambda: RDS("db", 0, "u"), "rds: port must be an integer from 1 to 65535"),
    (lambda: RDS("db", 5432, ""), "rds: user must be a non-empty string"),
])
def test_bad_options(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_codeartifact_durations() -> None:
    assert check_codeartifact_duration(None) is None
    assert check_codeartifact_duration(0) == 0
    assert check_codeartifact_duration(timedelta(minutes=15)) == 900
    assert check_codeartifact_duration(43200.0) == 43200


def test_reprs_name_the_options() -> None:
    assert repr(ECR("123456789012", region="eu-west-1")) == (
        "ECR('123456789012', region='eu-west-1')")
    assert repr(ECRPublic()) == "ECRPublic(region='us-east-1')"
    assert repr(CodeArtifact("d", duration=900, profile="p")) == (
        "CodeArtifact('d', duration=900, profile='p')")
    assert repr(RDS("db", 5432, "u")) == "RDS('db', 5432, 'u')"
    assert repr(EKS("c", role_arn="arn:aws:iam::123456789012:role/r")) == (
        "EKS('c', role_arn='arn:aws:iam::123456789012:role/r')")


def test_building_a_source_makes_no_client() -> None:
    # No credentials or region are needed to build (and so to check a configuration).
    source = ECR()
    assert source._client_obj is None
