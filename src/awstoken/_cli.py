"""The ``awstoken`` command line.

Subcommands are the modules of the private package ``awstoken.cli`` (one file each, named in
``awstoken.cli.COMMANDS``). Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from ._errors import AwstokenError
from ._version import version


def commands() -> list[ModuleType]:
    """The command modules, sorted by command name."""
    from . import cli

    found = [importlib.import_module(f"{cli.__name__}.{name}") for name in cli.COMMANDS]
    return sorted(found, key=lambda module: str(module.NAME))


#: Where people go from ``--help``: the reference of every setting, and a starting point.
EPILOG = ("Configuration: every key is described in docs/configuration.md (in awstoken's "
          "source tree); `awstoken init > awstoken.toml` prints a commented starter file and "
          "`awstoken check -c awstoken.toml` validates it.")


class _VersionAction(argparse.Action):
    """``--version``: reads the package metadata only when asked (it costs 20 ms to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"awstoken {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser for every command."""
    parser = argparse.ArgumentParser(
        prog="awstoken", epilog=EPILOG,
        description="Keep AWS authorization tokens fresh and put them on proxied requests.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                 epilog=EPILOG)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raise an AwstokenError)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except AwstokenError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"awstoken {args.command}: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("AWSTOKEN_DEBUG"):
            raise
        # A bug: say so in one line (the exception text may quote a token, so only its type).
        print(f"awstoken {args.command}: internal error ({type(exc).__name__}); set "
              "AWSTOKEN_DEBUG=1 for a traceback", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
