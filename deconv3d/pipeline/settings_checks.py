"""How the values of a batch's :class:`~deconv3d.pipeline.settings.Settings` are tested (a number,
positive, a list, one value or one per channel) and how a refusal of one is worded: named by its key
(a batch's TOML and options take it) or, for settings made from a command's options, by the option."""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers

from deconv3d.errors import InputError


def _many(value) -> tuple:
    """A setting that may hold one value or one per channel, as a tuple (empty for None)."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _sized(v) -> bool:
    """A list of values (a TOML ``voxel-size = 5`` gave "object of type 'int' has no len()")."""
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict))


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


#: True while :func:`make_settings` builds settings from a command's options (``deconvolve``).
_AS_OPTIONS = contextvars.ContextVar("deconv3d_settings_as_options", default=False)


@contextlib.contextmanager
def settings_as_options(options: bool = True):
    """Within it, refusals name the settings as a command's options (``--tv-weight``), without a batch's
    "batch configuration:"."""
    token = _AS_OPTIONS.set(bool(options))
    try:
        yield
    finally:
        _AS_OPTIONS.reset(token)


def check_ssl_only(method: str, model, train_steps) -> None:
    """A model or training steps (ssl's alone) refused with another method, naming those given."""
    extra = [_n(k) for k, v in (("model", model), ("train_steps", train_steps)) if v is not None]
    _check(method == "ssl" or not extra, f"{' and '.join(extra)} {'apply' if len(extra) > 1 else 'applies'} "
           f"to {_n('method')} ssl only: remove {'them' if len(extra) > 1 else 'it'} for {method}, or "
           f"choose {_n('method')} ssl")


def _n(name: str) -> str:
    """A setting's name in a message: the key (a batch's TOML and options take it), or a command's option."""
    return "--" + name.replace("_", "-") if _AS_OPTIONS.get() else name


def _shown(value, limit: int = 60) -> str:
    """``value`` for a one-line message: an array (or tensor) by its type and shape, not its values
    (Settings(psf=array) put the whole array in the message, over many lines); else its repr, cut."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message if _AS_OPTIONS.get() else f"batch configuration: {message}")
