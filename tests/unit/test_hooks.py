"""File sinks and on-rotate commands, run for real by a Rotator after each rotation."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import awstoken
from awstoken import (
    CommandHook,
    FileSink,
    FileStorage,
    FunctionSource,
    HookError,
    HookTimeout,
    MemoryStorage,
    Rotator,
    Schedule,
)
from tests.fixtures.wait import wait_until


class Tokens:
    """A source returning tok-1, tok-2, ... (or ``size``-long tokens of one repeated letter)."""

    def __init__(self, size: int = 0) -> None:
        self.n = 0
        self.size = size

    def __call__(self) -> str:
        self.n += 1
        if self.size:
            return "abcdefghijklmnopqrstuvwxyz"[self.n % 26] * self.size
        return f"secret-token-{self.n:04d}"


def rotator(hooks: list[awstoken.RotateHook], storage: awstoken.Storage | None = None,
            source: Tokens | None = None) -> Rotator:
    return Rotator("ca", FunctionSource(source or Tokens()), awstoken.basic_auth("aws"),
                   storage or MemoryStorage(), schedule=Schedule(poll=0.05), on_rotate=hooks)


# -- file sinks ------------------------------------------------------------------------------


def test_file_sink_writes_the_value_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ca-header"  # the parent is created, private
    sink = FileSink(path)
    token = rotator([sink]).refresh()
    assert path.read_text() == token.value
    assert token.value is not None and token.value.startswith("Basic ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sink.stats.runs == 1 and sink.stats.failures == 0
    assert sink.stats.last_success_at is not None


def test_file_sink_raw_content_and_custom_mode(tmp_path: Path) -> None:
    path = tmp_path / "ca-token"
    rot = rotator([FileSink(path, content="raw", mode=0o640)])
    rot.refresh()
    assert path.read_text() == "secret-token-0001"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    rot.refresh()
    assert path.read_text() == "secret-token-0002"
    # Only the file itself remains: no temporary files left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["ca-token"]


def test_file_sink_replaces_a_too_open_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    rotator([FileSink(path)]).refresh()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_readers_never_see_a_partial_sink_file(tmp_path: Path) -> None:
    """A reader process reads the sink in a loop while rotations rewrite it 150 times."""
    path = tmp_path / "sink"
    size = 12_000  # several pages, near the value limit: a torn or truncated file would show
    rot = rotator([FileSink(path, content="raw")], source=Tokens(size))
    rot.refresh()
    stop = tmp_path / "stop"
    reader = textwrap.dedent(f"""
        import json, os
        reads = bad = 0
        while not os.path.exists({str(stop)!r}):
            with open({str(path)!r}, "rb") as fh:
                data = fh.read()
            reads += 1
            if len(data) != {size} or data != data[:1] * {size}:
                bad += 1
        print(json.dumps({{"reads": reads, "bad": bad}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE)
    try:
        for _ in range(150):
            rot.refresh()
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
    result = json.loads(out)
    assert result["reads"] > 10
    assert result["bad"] == 0


def test_a_failing_sink_is_counted_and_the_token_stays(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "is-a-directory"
    (target / "child").mkdir(parents=True)  # os.replace cannot put a file over a non-empty dir
    sink = FileSink(target)
    storage = MemoryStorage()
    with caplog.at_level(logging.ERROR, logger="awstoken"):
        token = rotator([sink], storage).refresh()
    assert storage.get("ca") == token.value
    assert sink.stats.failures == 1 and sink.stats.runs == 1
    assert sink.stats.last_error is not None and str(target) in sink.stats.last_error
    assert "file sink" in caplog.text and "secret-token" not in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["is-a-directory"]  # no temp file left


def test_file_sink_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(HookError, match="mode"):
        FileSink(tmp_path / "x", mode=0o1777)
    with pytest.raises(HookError, match="content"):
        FileSink(tmp_path / "x", content="header")  # type: ignore[arg-type]


# -- on-rotate commands ----------------------------------------------------------------------

SPY = textwrap.dedent("""
    import json, os, sys
    token = sys.stdin.read()
    def proc(name):
        with open(f"/proc/{os.getpid()}/{name}", "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    report = {"stdin": token, "cmdline": proc("cmdline"), "environ": proc("environ"),
              "parent_cmdline": open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(),
              "env": {k: v for k, v in os.environ.items() if k.startswith("AWSTOKEN_")}}
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh)
""")


def test_command_gets_the_token_on_stdin_never_in_argv_or_environment(tmp_path: Path) -> None:
    spy = tmp_path / "spy.py"
    spy.write_text(SPY)
    report = tmp_path / "report.json"
    hook = CommandHook([sys.executable, str(spy), str(report)])
    token = rotator([hook]).refresh()
    seen = json.loads(report.read_text())
    assert seen["stdin"] == "secret-token-0001\n"  # raw token by default, newline-terminated
    for where in ("cmdline", "environ", "parent_cmdline"):
        assert "secret-token" not in seen[where], where
        assert token.value is not None and token.value.split()[1] not in seen[where], where
    assert seen["env"] == {"AWSTOKEN_NAME": "ca", "AWSTOKEN_GENERATION": "1",
                           "AWSTOKEN_EXPIRES_AT": ""}
    assert hook.stats.runs == 1 and hook.stats.failures == 0


def test_command_can_receive_the_header_value(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = CommandHook(["sh", "-c", f"cat > {out}"], content="value")
    token = rotator([hook]).refresh()
    assert out.read_text() == f"{token.value}\n"


def test_a_failing_command_is_counted_logged_without_the_token_and_keeps_it(
        caplog: pytest.LogCaptureFixture) -> None:
    hook = CommandHook(["sh", "-c", 'echo "login failed for $(cat)" >&2; exit 3'])
    storage = MemoryStorage()
    rot = rotator([hook], storage)
    with caplog.at_level(logging.ERROR, logger="awstoken"):
        token = rot.refresh()
        rot.refresh()
    assert storage.get("ca") is not None and token.generation == 1
    assert storage.read("ca").generation == 2  # type: ignore[union-attr]
    stats = hook.stats
    assert (stats.runs, stats.failures, stats.timeouts) == (2, 2, 0)
    assert stats.last_error is not None
    assert "exited with status 3: login failed for ***" in stats.last_error
    assert "on-rotate hook CommandHook('sh -c" in caplog.text
    assert "secret-token" not in caplog.text and "secret-token" not in stats.last_error


def test_a_command_past_its_timeout_has_its_process_group_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The hook leaves a grandchild behind in its group, then hangs.
    hook = CommandHook(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; sleep 300"], timeout=0.5)
    storage = MemoryStorage()
    started = time.monotonic()
    token = rotator([hook], storage).refresh()
    assert time.monotonic() - started < 10
    assert storage.get("ca") == token.value  # the token stays
    assert (hook.stats.failures, hook.stats.timeouts) == (1, 1)
    assert "timeout of 0.5s" in (hook.stats.last_error or "")
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not _alive(grandchild), 5, f"the grandchild {grandchild} gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # killed; waiting for init to reap it


def test_hook_timeout_error_class() -> None:
    hook = CommandHook(["sleep", "5"], timeout=0.2)
    with pytest.raises(HookTimeout):
        hook("ca", awstoken.Fetched("secret-token-1"), awstoken.Token(value="Basic x"))


def test_a_command_that_cannot_start_is_counted() -> None:
    hook = CommandHook(["/nonexistent/awstoken-hook"])
    with pytest.raises(HookError, match="could not start"):
        hook("ca", awstoken.Fetched("secret-token-1"), awstoken.Token(value="Basic x"))
    assert hook.stats.failures == 1


def test_command_options_are_checked() -> None:
    with pytest.raises(HookError, match="argv list"):
        CommandHook("docker login --password-stdin")
    with pytest.raises(HookError, match="empty"):
        CommandHook([])
    with pytest.raises(HookError, match="timeout"):
        CommandHook(["true"], timeout=0)


def test_only_the_leader_runs_hooks(tmp_path: Path) -> None:
    """Two rotators on one FileStorage directory: the lease holder rotates and runs hooks."""
    directory = tmp_path / "store"
    sinks = [FileSink(tmp_path / f"sink{i}") for i in (0, 1)]
    storages = [FileStorage(directory, poll=0.05) for _ in (0, 1)]
    rotators = [rotator([sinks[i]], storages[i]) for i in (0, 1)]
    try:
        for _ in range(3):
            for rot in rotators:
                rot.step()
        leaders = [rot.leader for rot in rotators]
        assert leaders == [True, False]
        assert sinks[0].stats.runs == 1 and sinks[1].stats.runs == 0
        assert not (tmp_path / "sink1").exists()
        assert storages[1].read("ca") is not None  # the follower reads the leader's token
        # The leader goes away: the other takes over and runs its own hooks from then on.
        rotators[0].stop()
        storages[1].request_refresh("ca")
        rotators[1].schedule = Schedule(poll=0.05, min_refresh_gap=0.01)
        time.sleep(0.02)
        rotators[1].step()
        assert rotators[1].leader
        assert sinks[1].stats.runs == 1 and (tmp_path / "sink1").exists()
        assert sinks[0].stats.runs == 1
    finally:
        for rot in rotators:
            rot.stop()
        for storage in storages:
            storage.close()


def test_hooks_do_not_run_after_a_failed_refresh(tmp_path: Path) -> None:
    def broken() -> str:
        raise awstoken.SourceError("AWS said no")

    sink = FileSink(tmp_path / "sink")
    rot = Rotator("ca", FunctionSource(broken), awstoken.bearer, MemoryStorage(), on_rotate=[sink])
    with pytest.raises(awstoken.SourceError):
        rot.refresh()
    assert sink.stats.runs == 0 and not (tmp_path / "sink").exists()


def test_a_hook_gets_a_minimal_environment_without_awstoken_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What awstoken's own environment may hold: inbound bearer tokens, the token endpoint's
    # secret, the Redis password. None of it reaches a hook unless named in pass_env.
    monkeypatch.setenv("AWSTOKEN_BEARER_TOKENS", "inbound-bearer-secret-1")
    monkeypatch.setenv("REDIS_PASSWORD", "redis-password-secret-2")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    out = tmp_path / "env"
    hook = CommandHook(["sh", "-c", f"env > {out}"])
    rotator([hook]).refresh()
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert "inbound-bearer-secret-1" not in out.read_text()
    assert "redis-password-secret-2" not in out.read_text()
    assert "DOCKER_CONFIG" not in seen
    assert seen["PATH"] == os.environ["PATH"] and seen["LC_ALL"] == "C.UTF-8"
    assert seen["AWSTOKEN_NAME"] == "ca"
    assert os.environ.get("AWSTOKEN_NAME") is None  # set for the hook only


def test_pass_env_hands_named_variables_to_the_hook(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("REDIS_PASSWORD", "redis-password-secret-2")
    out = tmp_path / "env"
    hook = CommandHook(["sh", "-c", f'echo "$DOCKER_CONFIG/$REDIS_PASSWORD" > {out}'],
                       pass_env=["DOCKER_CONFIG"])
    rotator([hook]).refresh()
    assert out.read_text().strip() == f"{tmp_path}/"
    with pytest.raises(HookError, match="pass_env"):
        CommandHook(["true"], pass_env=["NOT-A-NAME"])


def test_hooks_from_settings(tmp_path: Path) -> None:
    from awstoken._config.hooks import hooks_from_settings
    from awstoken._config.settings import TokenSettings

    assert hooks_from_settings(TokenSettings(name="ca")) == []
    sink, command = hooks_from_settings(TokenSettings(
        name="ca", sink=str(tmp_path / "ca"), sink_content="raw", on_rotate=("true", "x"),
        hook_timeout=5))
    assert isinstance(sink, FileSink)
    assert (sink.path, sink.content, sink.mode) == (tmp_path / "ca", "raw", 0o600)
    assert isinstance(command, CommandHook)
    assert (command.argv, command.timeout, command.content) == (["true", "x"], 5.0, "raw")
