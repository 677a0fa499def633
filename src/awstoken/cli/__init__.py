"""Subcommands of the ``awstoken`` command line: one module each (see ``awstoken._cli``)."""
