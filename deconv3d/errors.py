"""Exceptions for user-facing failures."""


class InputError(ValueError):
    """Bad user input: a missing or unreadable file, an invalid array or parameter.

    The message is one line that names the problem and how to fix it; the command
    line prints it as ``deconv3d: error: <message>`` and exits with status 2.
    """
