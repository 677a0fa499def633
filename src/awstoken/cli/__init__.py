"""Subcommands of the ``awstoken`` command line: one module each (see ``awstoken._cli``).

Every module here is imported to build the parser, whatever command runs: import optional
dependencies (the proxy stack, redis) inside ``run``, not at module level, so that
``awstoken check`` works without them.
"""
