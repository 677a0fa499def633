"""``docker-credential-awstoken``: a read-only docker credential helper backed by awstoken.

Speaks the protocol of docker-credential-helpers: ``get`` reads a server URL on stdin and
prints ``{"ServerURL", "Username", "Secret"}``; ``list`` prints ``{server URL: user}``;
``version`` prints the version; ``store`` and ``erase`` are refused (read-only, as
amazon-ecr-credential-helper does). A miss prints the protocol's "credentials not found"
message on stdout with exit status 1 and the reason on stderr; the token never appears
anywhere but in the answer to ``get``. Point docker, skopeo, podman or buildah at it with
``{"credHelpers": {"REGISTRY": "awstoken"}}`` and ``AWSTOKEN_CONFIG=/path/to/awstoken.toml``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .._errors import AwstokenError
from .common import NotFound, credentials, load_settings, obtain, registries, registry_token, remember

if TYPE_CHECKING:  # the loader comes with load_settings(): `version` needs none of it
    from .._config.settings import Settings

PROG = "docker-credential-awstoken"
#: The exact text docker-credential-helpers' clients recognise as a miss.
NOT_FOUND = "credentials not found in native keychain"
_USAGE = f"usage: {PROG} [-c FILE] get|list|version  (store and erase: read-only helper)"


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one helper action; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    config = None
    if len(args) >= 2 and args[0] in ("-c", "--config"):
        config, args = args[1], args[2:]
    if len(args) != 1:
        print(_USAGE, file=stderr)
        return 1
    action = args[0]
    # The rotator logs through "awstoken"; this process reports on stderr itself, once.
    logging.getLogger("awstoken").addHandler(logging.NullHandler())
    logging.getLogger("awstoken").propagate = False
    try:
        if action == "version":
            from .._version import version

            print(f"{PROG} (awstoken) {version()}", file=stdout)
            return 0
        if action in ("store", "erase"):
            stdin.read()
            print("not implemented", file=stdout)
            print(f"{PROG}: {action}: read-only helper; awstoken keeps the token fresh in its "
                  "storage (nothing to store or erase)", file=stderr)
            return 1
        if action == "list":
            settings = load_settings(config)
            json.dump({host: _user(settings, name) for host, name in
                       sorted(registries(settings).items())}, stdout)
            print(file=stdout)
            return 0
        if action == "get":
            return _get(config, stdin.read().strip(), stdout, stderr)
    except AwstokenError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"{PROG} {action}: {line}", file=stderr)
        return 1
    print(_USAGE, file=stderr)
    return 1


def _user(settings: Settings, name: str) -> str:
    token = settings.tokens[name]
    return token.basic_user or ("AWS" if token.source in ("ecr", "ecr-public") else "aws")


def _get(config: str | None, server_url: str, stdout: TextIO, stderr: TextIO) -> int:
    settings = load_settings(config)
    try:
        if not server_url:
            raise NotFound("no server URL on standard input")
        name = registry_token(settings, server_url)
        answer = obtain(settings, name)
    except NotFound as exc:
        print(NOT_FOUND, file=stdout)
        print(f"{PROG} get: {exc}", file=stderr)
        return 1
    user, secret = credentials(answer.value, settings.tokens[name])
    json.dump({"ServerURL": server_url, "Username": user, "Secret": secret}, stdout)
    print(file=stdout)
    remember(settings)
    return 0
