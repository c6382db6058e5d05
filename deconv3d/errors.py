"""Exceptions for user-facing failures, and the warnings said on the way."""

import sys


class InputError(ValueError):
    """Bad user input: a missing or unreadable file, an invalid array or parameter.

    The message is one line that names the problem and how to fix it; the command
    line prints it as ``deconv3d: error: <message>`` and exits with status 2.
    """


def warn(line: str, warnings: list | None = None) -> None:
    """Append a ``deconv3d: warning: ...`` line to ``warnings`` (for a caller that prints them
    once the input is checked, so that a refusal says only its error), else print it."""
    if warnings is None:
        print(line, file=sys.stderr)
    else:
        warnings.append(line)


def refuse_non_finite(result, what: str, fix: str) -> None:
    """Refuse to write a result with NaN or Inf values: one line naming ``what`` and the ``fix``."""
    import numpy as np

    if not np.isfinite(result).all():
        raise InputError(f"the {what} has NaN or Inf values {fix}")


def refuse_no_positive(source, method: str) -> None:
    """Refuse background-subtracted data with negative values and no positive one: Richardson-Lucy
    and the network return only zeros for it (``method`` "train": the network would learn nothing)."""
    raise InputError(f"{source} has no positive values, so {method} would return only zeros: {negative_fix(method)}")


def negative_fix(method: str) -> str:
    """What to do about negative (background-subtracted) data before ``method``."""
    return "add the subtracted offset back" + (", or use --method wiener" if method != "train" else "")
