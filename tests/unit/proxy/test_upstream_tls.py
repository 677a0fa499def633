"""``check_tls`` (serve's check before its workers start) refuses exactly what ``tls_context``
(each process's upstream context) refuses, with the same message, without the system CAs."""

from __future__ import annotations

from pathlib import Path

import pytest

from awstoken import ConfigError
from awstoken._config.settings import ServerSettings
from awstoken.proxy._upstream import check_tls, tls_context


def _message(call: object, settings: ServerSettings) -> str | None:
    assert callable(call)
    try:
        call(settings)
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("case", ["missing", "not pem", "off", "none"])
def test_check_tls_refuses_what_tls_context_refuses(tmp_path: Path, case: str) -> None:
    bad = tmp_path / "ca.pem"
    if case == "not pem":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    settings = ServerSettings(ca_file=None if case == "none" else str(bad), verify_tls=case != "off")
    expected = _message(tls_context, settings)
    assert _message(check_tls, settings) == expected
    assert (expected is not None) == (case in ("missing", "not pem"))
    if expected is not None:
        assert expected.startswith(f"server.ca_file {str(bad)!r}: cannot load it (")
