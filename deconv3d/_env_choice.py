"""``env_choice``: reading a ``DECONV3D_*`` environment variable that names one of a few choices."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping

from deconv3d.errors import InputError


def env_value(name: str) -> str:
    """Environment variable ``name``, stripped and lower-cased; ``"auto"`` when unset or blank."""
    return os.environ.get(name, "auto").strip().lower() or "auto"


def env_choice(name: str, choices: Iterable[str],
               needs: Mapping[str, tuple[Callable[[], bool], str]] | None = None) -> str:
    """The value of ``name`` (:func:`env_value`), one of ``choices``; an InputError for another value.

    ``needs`` maps a choice to ``(available, why)``: choosing it while ``available()`` is false is
    an InputError ``f"{name}={choice} but {why}"``, so ``why`` names what is missing and the fix.
    """
    choices = tuple(choices)
    choice = env_value(name)
    if choice not in choices:
        raise InputError(f"{name}={choice!r} is not one of {', '.join(choices)}: unset it or pick one")
    available, why = (needs or {}).get(choice, (None, ""))
    if available is not None and not available():
        raise InputError(f"{name}={choice} but {why}")
    return choice
