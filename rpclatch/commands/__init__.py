"""Subcommands of the ``rpclatch`` CLI, one module per command group.

Each module defines ``register(subparsers)`` which adds its parser(s) and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Raise :class:`rpclatch.cli.UserError` for
a one-line error message.
"""

#: Modules under rpclatch.commands that the CLI loads, in help order. A module that does not exist
#: yet is skipped, so command groups can land independently.
COMMAND_MODULES = ("demo", "rpc", "realm", "nfs", "interop")
