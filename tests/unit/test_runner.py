"""The one runner behind the Command source and the command hook: bounded output capture."""

from __future__ import annotations

import pytest

from awstoken import Command, CommandError, CommandTimeout
from awstoken._sources.spawn import MAX_STDERR, MAX_STDOUT, Runner


def test_a_command_printing_more_than_the_bound_is_refused() -> None:
    # 2 MiB of output is no token: an error naming the bound, not 2 MiB in memory.
    command = Command(f"head -c {2 * MAX_STDOUT} /dev/zero", timeout=30)
    with pytest.raises(CommandError, match=r"printed more than 1024 KiB and was killed") as info:
        command.run()
    assert not isinstance(info.value, CommandTimeout)


def test_output_up_to_the_bound_is_kept_whole() -> None:
    assert len(Command(f"head -c {MAX_STDOUT} /dev/zero | tr '\\0' x", timeout=30).run()) \
        == MAX_STDOUT


def test_stderr_is_read_to_its_end_but_kept_only_up_to_the_bound() -> None:
    # The command never blocks on a full stderr pipe; only the start is kept for the message.
    done = Runner().run(["sh", "-c", f"echo boom >&2; head -c {4 * MAX_STDERR} /dev/zero >&2; "
                        "exit 3"], timeout=30, env=None)
    assert (done.returncode, len(done.stderr)) == (3, MAX_STDERR)
    assert done.failure() == "exited with status 3: boom"


def test_input_is_written_and_a_command_that_ignores_it_is_no_error() -> None:
    runner = Runner()
    assert runner.run(["cat"], timeout=30, env=None, stdin=b"x" * 200_000).stdout == b"x" * 200_000
    assert runner.run(["true"], timeout=30, env=None, stdin=b"y" * 200_000).returncode == 0
