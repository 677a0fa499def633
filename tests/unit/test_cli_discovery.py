"""``awstoken.cli.COMMANDS`` names every command module of the package, and only those."""

from __future__ import annotations

import pkgutil

import awstoken.cli
from awstoken._cli import commands


def test_the_listed_commands_are_the_package_modules() -> None:
    modules = {info.name for info in pkgutil.iter_modules(awstoken.cli.__path__)
               if not info.name.startswith("_")}
    assert set(awstoken.cli.COMMANDS) == modules, "list the new module in awstoken.cli.COMMANDS"
    assert len(awstoken.cli.COMMANDS) == len(modules)


def test_every_listed_module_is_a_command() -> None:
    names = [str(module.NAME) for module in commands()]
    assert len(set(names)) == len(names) == len(awstoken.cli.COMMANDS)  # one command each
    assert all(callable(module.run) and callable(module.add_arguments) for module in commands())
