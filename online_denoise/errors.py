"""The error type for bad input: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """Something wrong with what the user gave us (a file, a flag), not a bug in the program."""
