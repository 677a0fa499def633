"""``awstoken fetch -c FILE NAME``: run one token's source once and print the header value."""

from __future__ import annotations

import argparse
import sys

from .._errors import AwstokenError
from ._common import add_token_arguments, configured_token, load_settings

NAME = "fetch"
HELP = ("run the source of one configured token once and print the final header value "
        "(nothing is stored)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_token_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here: every command module is imported to build the parser (see cli/__init__).
    from .._config.build import build_source, build_transform
    from .._rotation.rotator import fetch_value

    token = configured_token(load_settings(args), args.name)
    try:
        value = fetch_value(args.name, build_source(token), build_transform(token))[1]
    except AwstokenError as exc:
        text = str(exc)
        prefix = f"token {args.name!r}"
        raise AwstokenError(text if text.startswith(prefix) else f"{prefix}: {text}") from None
    sys.stdout.write(value + "\n")
    return 0
