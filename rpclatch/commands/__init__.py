"""Subcommands of the ``rpclatch`` CLI, one module per command group.

Each module defines ``register(subparsers)`` which adds its parser(s) and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Raise :class:`rpclatch.errors.UserError`
for a one-line error message.
"""

#: Modules under rpclatch.commands that the CLI loads, in help order (a listed module that is not
#: there is skipped by ``rpclatch.cli.build_parser``).
COMMAND_MODULES = ("demo", "rpc", "realm", "nfs", "interop", "ipsec", "conformance")
