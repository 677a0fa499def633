"""A failing source that quotes the token on stderr never publishes it (issue 10).

Errors of a refresh go to the log, the stored record (``/readyz``, ``awstoken status``,
``status --json``) and the exception: the live token, its raw form and the ``Basic``
password are masked in all of them, also when the quoted line is cut.
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
from pathlib import Path

import pytest

from awstoken import FileStorage
from awstoken._errors import AwstokenError
from awstoken._rotation.rotator import Rotator
from awstoken._sources.command import Command
from awstoken._sources.transforms import basic_auth
from tests.fixtures.cli import run_cli

# First run: print the token. Later runs: fail, quoting on stderr what $MODE says.
SCRIPT = r"""
state=$1
raw=$2
if [ ! -e "$state" ]; then : > "$state"; printf '%s\n' "$raw"; exit 0; fi
case $(cat "$state.mode") in
  quote) b64=$(printf 'aws:%s' "$raw" | base64 -w0)
    echo "error: upstream refused Authorization: Basic $b64 ($raw)" >&2 ;;
  long) echo "error: $(printf '%0150d' 0) token=$raw" >&2 ;;
  new) printf '%s\n' "$3"; echo "error: the new token $3 did not verify" >&2 ;;
esac
exit 1
"""


def _rotator(tmp_path: Path, raw: str, new: str = "") -> tuple[Rotator, Path]:
    script = tmp_path / "source.sh"
    script.write_text(SCRIPT)
    state = tmp_path / "state"
    command = shlex.join(["sh", str(script), str(state), raw, new])
    storage = FileStorage(tmp_path / "store")
    return Rotator("ecr", Command(command), basic_auth("aws"), storage), state


def _secrets_of(raw: str) -> list[str]:
    value = "Basic " + base64.b64encode(f"aws:{raw}".encode()).decode()
    return [raw, value, value.split()[1], raw[:40], raw[-40:]]


@pytest.mark.parametrize("mode", ["quote", "long"])
def test_a_failing_command_quoting_the_live_token_is_masked(tmp_path: Path, mode: str) -> None:
    raw = "tok" + secrets.token_hex(24 if mode == "quote" else 200)
    rotator, state = _rotator(tmp_path, raw)
    rotator.refresh()
    Path(f"{state}.mode").write_text(mode)
    with pytest.raises(AwstokenError) as failed:
        rotator.refresh()
    record = rotator.storage.read("ecr")
    assert record is not None and record.error is not None
    assert "exited with status 1" in record.error and "***" in record.error
    for text in (str(failed.value), record.error):
        for secret in _secrets_of(raw):
            assert secret not in text
    config = tmp_path / "awstoken.toml"
    config.write_text(f"[storage]\ntype = 'file'\npath = '{tmp_path / 'store'}'\n"
                      "[tokens.ecr]\ncommand = 'true'\n")
    for extra in ([], ["--json"]):
        status = run_cli("status", "-c", str(config), *extra, timeout=60)
        assert "exited with status 1" in status.stdout, status.stderr
        if extra:
            assert json.loads(status.stdout)["tokens"][0]["error"] == record.error
        for secret in _secrets_of(raw):
            assert secret not in status.stdout + status.stderr
    rotator.storage.close()


def test_a_token_printed_before_failing_is_masked_in_the_error(tmp_path: Path) -> None:
    raw, new = "tok" + secrets.token_hex(24), "new" + secrets.token_hex(24)
    rotator, state = _rotator(tmp_path, raw, new)
    rotator.refresh()
    Path(f"{state}.mode").write_text("new")
    with pytest.raises(AwstokenError, match=r"the new token \*\*\* did not verify") as failed:
        rotator.refresh()
    assert new not in str(failed.value)
    rotator.storage.close()
