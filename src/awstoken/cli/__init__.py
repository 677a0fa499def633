"""Subcommands of the ``awstoken`` command line: one module each (see ``awstoken._cli``).

Every module here is imported to build the parser, whatever command runs: import optional
dependencies (the proxy stack, redis) inside ``run``, not at module level, so that
``awstoken check`` works without them.
"""

#: The command modules, by file name. Listed, not looked up at start-up: listing a package's
#: files as pkgutil does imports ``inspect``, a fifth of ``awstoken --help``'s CPU.
#: ``tests/unit/test_cli_discovery.py`` fails when a module here is missing from the list.
COMMANDS = ("cache", "check", "fetch", "get", "init", "kubelet", "serve", "status")
