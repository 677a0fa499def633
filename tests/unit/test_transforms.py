"""Header values: transforms and the validation that keeps them safe to send."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

import awstoken
from awstoken._sources.transforms import MAX_VALUE_LENGTH, as_transform


@pytest.mark.parametrize("bad", ["tok\r\nX-Evil: 1", "tok\n", "a\rb", "a\x00b", "a\x7fb", "a\x85b", "\tab"])
def test_control_characters_are_rejected(bad: str) -> None:
    with pytest.raises(awstoken.TokenValueError, match="control character") as info:
        awstoken.validate_value(bad, "token 'ecr'")
    assert "token 'ecr'" in str(info.value)
    assert bad not in str(info.value)


def test_empty_and_overlong_values_are_rejected() -> None:
    with pytest.raises(awstoken.TokenValueError, match="empty"):
        awstoken.validate_value("")
    with pytest.raises(awstoken.TokenValueError, match="over the limit"):
        awstoken.validate_value("a" * (MAX_VALUE_LENGTH + 1))
    # Real ECR tokens are longer than 4 KiB: they must pass.
    assert awstoken.validate_value("Basic " + "Q" * 6000).startswith("Basic ")


def test_surrounding_whitespace_is_rejected_in_values() -> None:
    with pytest.raises(awstoken.TokenValueError, match="whitespace"):
        awstoken.validate_value(" Basic x")


def test_template_basic_bearer_and_basic_auth() -> None:
    assert awstoken.template("Basic {token}")("abc") == "Basic abc"
    assert awstoken.template("{token}; x")("a{b}") == "a{b}; x"  # no str.format surprises
    assert awstoken.basic("abc") == "Basic abc"
    assert awstoken.bearer("abc") == "Bearer abc"
    value = awstoken.basic_auth("aws")("s3cret")
    assert value == "Basic " + base64.b64encode(b"aws:s3cret").decode()
    with pytest.raises(awstoken.TokenValueError, match="placeholder"):
        awstoken.template("Basic")
    with pytest.raises(awstoken.TokenValueError, match="must not contain"):
        awstoken.basic_auth("a:b")


def test_as_transform_accepts_none_strings_and_callables() -> None:
    assert as_transform(None)("x") == "x"
    assert as_transform("Bearer {token}")("x") == "Bearer x"
    assert as_transform(str.upper)("x") == "X"
    with pytest.raises(awstoken.TokenValueError):
        as_transform(42)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_validation_accepts_exactly_the_safe_values(value: str) -> None:
    safe = (bool(value) and value == value.strip()
            and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value))
    if safe:
        assert awstoken.validate_value(value) == value
    else:
        with pytest.raises(awstoken.TokenValueError):
            awstoken.validate_value(value)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
def test_formatted_printable_tokens_always_validate(raw: str) -> None:
    assert awstoken.validate_value(awstoken.template("Basic {token}")(raw)) == "Basic " + raw
