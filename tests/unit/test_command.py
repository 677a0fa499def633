"""The Command source: output handling, errors, timeouts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import awstoken
from tests.fixtures.wait import wait_until


def test_output_is_stripped_of_the_trailing_newline() -> None:
    # ngx_aws_token's defect: the CLI's newline ended up inside the header.
    assert awstoken.Command("printf 'abc\\n'").fetch().token == "abc"
    assert awstoken.Command(["printf", "  abc \n\n"]).fetch().token == "abc"
    assert awstoken.create("printf 'QVdTOnBhc3M=\\n'", "Basic {token}") == "Basic QVdTOnBhc3M="


def test_shell_commands_keep_quotes_and_pipes() -> None:
    assert awstoken.Command("echo 'a b' | tr ' ' '-'").fetch().token == "a-b"


def test_empty_output_is_an_error() -> None:
    with pytest.raises(awstoken.CommandError, match="printed nothing"):
        awstoken.Command("printf '\\n  \\n'").fetch()


def test_nonzero_exit_names_status_and_first_stderr_line_not_the_token(tmp_path: Path) -> None:
    script = tmp_path / "fake-aws"
    script.write_text("echo SECRET-TOKEN; echo >&2; echo 'An error occurred (Denied)' >&2\n"
                      "echo second >&2; exit 3\n")
    cmd = awstoken.Command(["sh", str(script)])
    with pytest.raises(awstoken.CommandError) as info:
        cmd.fetch()
    message = str(info.value)
    assert "exited with status 3" in message
    assert "An error occurred (Denied)" in message
    assert "second" not in message
    assert "SECRET-TOKEN" not in message
    assert info.value.returncode == 3


def test_error_through_create_names_the_token_context() -> None:
    with pytest.raises(awstoken.AwstokenError, match="status 255"):
        awstoken.create("exit 255")


def test_command_that_cannot_start() -> None:
    with pytest.raises(awstoken.CommandError, match="could not start"):
        awstoken.Command(["/nonexistent/aws", "ecr"]).fetch()


def test_non_utf8_output_is_an_error() -> None:
    with pytest.raises(awstoken.CommandError, match="not UTF-8"):
        awstoken.Command(["printf", "\\377\\376abc"]).fetch()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes only once reaped; check its state.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[1].split()[0] != "Z"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The shell starts a grandchild that would outlive a plain kill of the shell.
    cmd = awstoken.Command(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(awstoken.CommandTimeout, match=r"timeout of 0\.5s"):
        cmd.fetch()
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not _alive(grandchild), 5, f"the grandchild {grandchild} gone")


def test_invalid_commands_are_rejected_early() -> None:
    with pytest.raises(awstoken.CommandError, match="empty"):
        awstoken.Command("  ")
    with pytest.raises(awstoken.CommandError, match="empty"):
        awstoken.Command([])
    with pytest.raises(awstoken.CommandError, match="timeout"):
        awstoken.Command("true", timeout=0)


def test_reprs_never_show_tokens() -> None:
    assert "abc" not in repr(awstoken.Fetched("abc", 1.0))
    assert "abc" not in repr(awstoken.Token("Basic abc"))


def test_timeout_does_not_wait_for_a_descendant_that_left_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # setsid puts the sleeper in a session of its own, out of reach of the group kill, and it
    # keeps the command's stdout open.
    cmd = awstoken.Command(f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & wait",
                           timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(awstoken.CommandTimeout):
            cmd.fetch()
        assert time.monotonic() - started < 10  # 0.5 s timeout + 5 s grace, not 60 s
    finally:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
