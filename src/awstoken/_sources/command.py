"""Token sources: the Source protocol and the Command source (the AWS CLI way)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._errors import CommandError, CommandTimeout, ConfigError
from . import jsonout as _jsonout
from .spawn import MAX_STDOUT, OutputTooLarge, Runner

DEFAULT_TIMEOUT = 60.0

@dataclass(frozen=True, slots=True)
class Fetched:
    """What a source yields: the raw token and, where known, its expiry (epoch seconds)."""

    token: str
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Fetched(token='***', expires_at={self.expires_at!r})"


@runtime_checkable
class Source(Protocol):
    """Anything that can fetch a fresh raw token."""

    def fetch(self) -> Fetched:
        """Fetch a token now; raise :class:`awstoken.SourceError` on failure."""
        ...


class FunctionSource:
    """A source backed by a plain callable returning the raw token (or a :class:`Fetched`)."""

    def __init__(self, func: Callable[[], str | Fetched]) -> None:
        self._func = func

    def fetch(self) -> Fetched:
        result = self._func()
        return result if isinstance(result, Fetched) else Fetched(result)

    def __repr__(self) -> str:
        return f"FunctionSource({getattr(self._func, '__name__', self._func)!r})"


OutputParser = Callable[[str], Fetched]


class Command:
    """Run a command and use its standard output as the token.

    ``command`` is a shell command line (run by ``/bin/sh -c``, as ngx_aws_token's
    ``io.popen`` did, so quotes and pipes work) or an argv list (run directly). The output is
    stripped of surrounding whitespace: the AWS CLI's trailing newline never reaches a header.
    On timeout the command's whole process group is killed. ``parse`` turns the stripped
    output into a :class:`Fetched` (the default takes it as the token, with no expiry).

    For JSON output, ``token_path`` names where the token is and ``expiry_path`` where its
    expiry is (epoch seconds as AWS CLI v1 prints them, or ISO 8601 as v2 does), e.g.
    ``Command("aws ecr get-authorization-token --output json",
    token_path="authorizationData[0].authorizationToken",
    expiry_path="authorizationData[0].expiresAt")``. Errors about the output never quote it:
    it holds the token.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        parse: OutputParser | None = None,
        token_path: str | None = None,
        expiry_path: str | None = None,
    ) -> None:
        if isinstance(command, str):
            if not command.strip():
                raise CommandError("the command is empty")
            self._argv: list[str] | str = command
        else:
            argv = [str(a) for a in command]
            if not argv or not argv[0]:
                raise CommandError("the command is empty")
            self._argv = argv
        if timeout <= 0:
            raise CommandError(f"command timeout must be positive, not {timeout!r}")
        self.timeout = float(timeout)
        # Tracked: each run in its own session (a timeout kills the whole group), killed with
        # this program when it exits (rotation threads are daemons).
        self._runner = Runner(track=True)
        self._env = dict(env) if env is not None else None
        self._parse = parse
        self.token_path = token_path
        self.expiry_path = expiry_path
        self._token_steps: tuple[_jsonout.Step, ...] | None = None
        self._expiry_steps: tuple[_jsonout.Step, ...] | None = None
        if token_path is not None or expiry_path is not None:
            if parse is not None:
                raise ConfigError("give either parse or token_path/expiry_path, not both")
            if token_path is None:
                raise ConfigError("expiry_path needs token_path: say where the token is too")
            self._token_steps = _jsonout.parse_path(token_path, "token_path")
            if expiry_path is not None:
                self._expiry_steps = _jsonout.parse_path(expiry_path, "expiry_path")

    @property
    def display(self) -> str:
        """A short rendering of the command for messages."""
        text = self._argv if isinstance(self._argv, str) else shlex.join(self._argv)
        return text if len(text) <= 80 else text[:77] + "..."

    def __repr__(self) -> str:
        return f"Command({self.display!r})"

    def fetch(self) -> Fetched:
        out = self.run()
        if not out:
            raise CommandError(f"command {self.display!r} printed nothing", returncode=0)
        if self._token_steps is not None:
            return self._from_json(out, self._token_steps, self._expiry_steps)
        return self._parse(out) if self._parse is not None else Fetched(out)

    def _from_json(self, out: str, token_steps: tuple[_jsonout.Step, ...],
                   expiry_steps: tuple[_jsonout.Step, ...] | None) -> Fetched:
        try:
            document = json.loads(out)
        except ValueError as exc:
            # Position only: the output itself may hold the token.
            where = f"line {exc.lineno}, column {exc.colno}" if isinstance(
                exc, json.JSONDecodeError) else "somewhere"
            raise CommandError(f"command {self.display!r} printed output that is not JSON "
                               f"(error at {where}); token_path needs JSON output "
                               "(--output json)", returncode=0) from None
        token = self._pick(document, token_steps, "token_path")
        if not isinstance(token, str):
            raise CommandError(f"command {self.display!r}: token_path {self.token_path!r} "
                               f"leads to {_jsonout.kind(token)}, not a string", returncode=0)
        if expiry_steps is None:
            return Fetched(token)
        raw_expiry = self._pick(document, expiry_steps, "expiry_path")
        try:
            expires_at = _jsonout.parse_expiry(raw_expiry)
        except ValueError as exc:
            raise CommandError(f"command {self.display!r}: expiry_path {self.expiry_path!r} "
                               f"is not a time ({exc})", returncode=0) from None
        return Fetched(token, expires_at)

    def _pick(self, document: object, steps: tuple[_jsonout.Step, ...], what: str) -> object:
        try:
            return _jsonout.lookup(document, steps)
        except _jsonout.PathMissing as exc:
            path = self.token_path if what == "token_path" else self.expiry_path
            raise CommandError(f"command {self.display!r}: {what} {path!r} is not in the "
                               f"JSON output: {exc}", returncode=0) from None

    def cancel(self) -> None:
        """Kill the process groups of this command's running runs (their ``run`` raises).

        A leader that loses its lease mid-refresh abandons the run this way.
        """
        self._runner.cancel()

    def run(self) -> str:
        """Run the command and return its stripped standard output."""
        env = None if self._env is None else {**os.environ, **self._env}
        try:
            done = self._runner.run(self._argv, shell=isinstance(self._argv, str), env=env,
                                    timeout=self.timeout)
        except OSError as exc:
            raise CommandError(f"command {self.display!r} could not start: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"command {self.display!r} ran past its timeout of {self.timeout:g}s and was "
                "killed") from None
        except OutputTooLarge:
            raise CommandError(f"command {self.display!r} printed more than "
                               f"{MAX_STDOUT // 1024} KiB and was killed") from None
        if done.returncode != 0:
            # stderr may quote the token: the one it printed on stdout before failing, or
            # the current one (masked through the rotator's _mask.masking context).
            printed = done.stdout.decode("utf-8", "replace").strip()
            raise CommandError(f"command {self.display!r} {done.failure((printed,))}",
                               returncode=done.returncode)
        try:
            return done.stdout.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"command {self.display!r} printed output that is not UTF-8 (byte "
                f"{exc.start})", returncode=0) from None


def as_source(source: Source | str | Sequence[str] | Callable[[], str | Fetched], *,
              timeout: float = DEFAULT_TIMEOUT) -> Source:
    """Accept a Source, a command (string or argv list) or a callable."""
    if isinstance(source, str):
        return Command(source, timeout=timeout)
    if isinstance(source, Source):
        return source
    if callable(source):
        return FunctionSource(source)
    return Command(source, timeout=timeout)
