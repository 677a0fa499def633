"""``awstoken get -c FILE NAME``: print the stored value of one token, for shell scripts."""

from __future__ import annotations

import argparse
import sys
import time

from .._errors import AwstokenError
from ._common import add_token_arguments, configured_token, load_settings

NAME = "get"
HELP = ("print the current stored header value of one token (exit 1 with the reason when "
        "there is none or it has expired)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_token_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here: every command module is imported to build the parser (see cli/__init__).
    from .._config.build import build_storage

    settings = load_settings(args)
    configured_token(settings, args.name)
    storage = build_storage(settings.storage)
    try:
        record = storage.read(args.name)
    finally:
        storage.close()
    now = time.time()
    if record is None or record.value is None:
        why = f"; last error: {record.error}" if record is not None and record.error else ""
        raise AwstokenError(f"token {args.name!r}: no token stored yet{why}")
    if record.expired(now):
        assert record.expires_at is not None
        why = f"; last error: {record.error}" if record.error else ""
        raise AwstokenError(f"token {args.name!r}: the stored token expired "
                            f"{now - record.expires_at:.0f}s ago{why}")
    sys.stdout.write(record.value + "\n")
    return 0
