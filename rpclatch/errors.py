"""Errors shared across layers that are not tied to one protocol."""


class UserError(Exception):
    """A problem with what the user asked for; the CLI shows the message as one line (exit 2)."""
