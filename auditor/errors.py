"""Exceptions that map to the CLI's exit codes."""


class UserError(Exception):
    """A mistake in the user's input (policy, file, layer name, image): exit code 2, one line, no traceback."""


class CheckError(Exception):
    """A check could not be computed; the audit records ERROR for it and goes on."""
