"""The command line's parser and the argument kinds its commands share: :class:`Parser`, whose
usage errors follow the contract (one line, exit status 2) and name the fix where an option took
the input's place; :class:`SpatialSizes` and :func:`spatial_sizes` for a value per spatial axis;
the number types (:func:`positive_float`, :func:`non_negative_float`, :func:`positive_int`,
:func:`whole_int`); the option groups several commands add (:func:`add_optics`, :func:`add_common`); and
the choices and help texts of ``--psf-model``, ``--device`` and ``--amp``."""

from __future__ import annotations

import argparse
import math
import re

from deconv3d.errors import InputError

PSF_MODELS = ("gaussian", "gibson-lanni", "vectorial")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (default: CUDA when an NVIDIA GPU is available, else the CPU), cpu or cuda"
AMP_HELP = ("mixed precision for the network, in training and inference: float16 on CUDA, bfloat16 on CPUs with "
            "AMX, where each takes about half the time or less; float32 elsewhere (default on; --no-amp: float32)")


class SpatialSizes(argparse.Action):
    """A value per spatial axis (``nargs=3``, metavar ``Z Y X``): three, or two (``Y X``) for a 2D
    image; whether the count fits the image is checked once it is read (:func:`spatial_sizes`).

    Taking three only, the command line refused the ``DY DX`` form its own hints name for 2D images.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (2, 3):
            raise argparse.ArgumentError(self, f"{self.forms()}, got {len(values)}")
        setattr(namespace, self.dest, list(values))

    def forms(self) -> str:
        return f"expected 3 values ({' '.join(self.metavar)}), or 2 ({' '.join(self.metavar[1:])}) for a 2D image"


def spatial_sizes(values, ndim: int, option: str, name, form: str = "Z Y X") -> tuple | None:
    """The last ``ndim`` of an option's ``values`` (:class:`SpatialSizes`), or None when not given;
    fewer values than the image ``name`` has axes are refused, naming the ``form`` to give."""
    if not values:
        return None
    if len(values) < ndim:
        raise InputError(f"{option} gives {len(values)} values but {name} is {ndim}D: give {option} {form}")
    return tuple(values)[-ndim:]


def _looks_like_a_file(text: str) -> bool:
    import os

    return os.path.exists(text) or text.lower().endswith((".tif", ".tiff", ".zarr", ".ckpt", ".pt", ".toml"))


def repeat_hint(given) -> str:
    """Why an argument was left over when ``--model`` was given two files (``--model a.ckpt b.ckpt
    in.tif``: b.ckpt became the input): it takes one file per occurrence."""
    given = [str(a) for a in given]
    if "--model" in given:
        after = given[given.index("--model") + 1:]
        if len(after) > 1 and not after[1].startswith("-"):
            return ": --model takes one file; for one network per channel repeat it: --model A.ckpt --model B.ckpt"
    return ""


#: A negative number as an argument, not an option: argparse's own pattern (``-4``, ``-.5``, ``-0.5``) took
#: ``-4e0`` and ``-1.5e-1`` for options, so ``--levels -4e0`` met "expected at least one argument"; ``-inf`` and
#: ``-nan`` (which ``float`` reads) likewise, so ``--voxel-size -inf 1 1`` met "expected 3 values, got 0"
#: instead of the option's own refusal of the value.
NEGATIVE_NUMBER = re.compile(r"^-((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|(?i:inf|infinity|nan))$")


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the contract: one line, exit status 2, and which reads a negative
    number in scientific notation as a value (:data:`NEGATIVE_NUMBER`); the command's sub-parsers are of this
    class too (``parser_class=Parser``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(args) if args is not None else []  # (a subcommand's parser gets its own part)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # a fourth value was left over ("unrecognized arguments: 0.1"), or took the input's place
            for action in self._actions:
                if isinstance(action, SpatialSizes) and self._values_after(action) > 3:
                    self.error(f"argument {'/'.join(action.option_strings)}: {action.forms()}, "
                               f"got {self._values_after(action)}")
        if not any(isinstance(action, argparse._SubParsersAction) for action in self._actions):
            namespace._given_options = self._options_given(args)  # (a command's parser; copied to the top's)
        return namespace, extras

    def _options_given(self, args) -> frozenset:
        """The destinations of the options given in ``args``, whatever their values: one given at its
        default is given too (compared with the defaults, ``--method rl --tv-weight 0.002`` drew no
        warning that rl ignores it). The arguments parsed again onto a namespace holding a marker
        instead of each default: a marker left in place is an option not given. (The marker is a
        list, which repeatable options copy before adding to it, so they replace it too.)"""

        class Unset(list):
            pass

        unset = Unset()
        start = argparse.Namespace(**{a.dest: unset for a in self._actions if a.dest is not argparse.SUPPRESS})
        probe, _ = super().parse_known_args(args, start)
        return frozenset(dest for dest, value in vars(probe).items() if value is not unset)

    def _values_after(self, action) -> int:
        """How many numbers follow the last of ``action``'s options among the given arguments."""
        given = [str(a) for a in self._given]
        at = max((i for i, a in enumerate(given) if a in action.option_strings), default=None)
        if at is None:
            return 0
        count = 0
        for text in given[at + 1:]:
            try:
                float(text)
            except ValueError:
                break
            count += 1
        return count

    def error(self, message):
        raise InputError(f"{message}{self._greedy_hint(message)} (see '{self.prog} --help')")

    def _get_nargs_pattern(self, action):
        if isinstance(action, SpatialSizes):  # up to three values, counted by the action: three stay
            return "(A?A?A?)"  # taken before a positional (``--voxel-size 0.3 0.1 0.1 in.tif``), as with nargs=3
        return super()._get_nargs_pattern(action)

    def _greedy_hint(self, message: str) -> str:
        """Why a positional is missing when a one-per-channel option took it: ``--psf psf.tif in.tif``
        reads both as PSFs."""
        given = [str(a) for a in getattr(self, "_given", [])]
        missing = message.split("arguments are required: ", 1)[1].split(", ") if "arguments are required: " in message \
            else []
        taken = message.split("value: ", 1)[1].strip("'") if message.startswith("argument --wavelength: invalid") \
            and "value: " in message else None
        if taken is not None and _looks_like_a_file(taken) and any(
                a.nargs is None and not a.option_strings for a in self._actions):  # '--wavelength 0.5 in.tif'
            return ": --wavelength takes one value per channel, up to the next option; give it after the input"
        quoted = message.rsplit("'", 2)  # the value refused, last in the message
        for action in self._actions:  # '--voxel-size 0.1 0.1 in.tif' (the Y X form) took the input as DZ DY DX
            if isinstance(action, SpatialSizes) and message.startswith(f"argument {'/'.join(action.option_strings)}:") \
                    and len(quoted) == 3 and not quoted[2] and _looks_like_a_file(quoted[1]):
                return (f": {action.option_strings[0]} takes up to 3 values, so it took {quoted[1]} too; give it "
                        "after the input")
        if not any(not name.startswith("-") for name in missing):  # only a positional can have been taken
            return ""
        for option in ("--psf", "--wavelength"):
            for at in (i for i, a in enumerate(given) if a == option):  # (each of a repeated option's occurrences)
                after = given[at + 1:]
                values = next((after[:i] for i, a in enumerate(after) if a.startswith("-") and len(a) > 1), after)
                if len(values) > 1:
                    return (f": {option} took {' '.join(values)} (it takes one value per channel, up to the next "
                            f"option); give the {option} values after the input, or end them with another option")
        return ""


def whole_int(text: str, least: int | None = None) -> int:
    """``int(text)``, at least ``least`` where given. A number with a fraction, an exponent or a decimal point
    (``--seed -1e0``, which :data:`NEGATIVE_NUMBER` lets through as a value) is refused as such, with what to
    pass (:func:`_not_whole`), not as argparse's "invalid int value"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_not_whole(text, least)) from None
    if least is not None and value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """:func:`whole_int` of 0 or more (seeds, pyramid levels)."""
    return whole_int(text, least=0)


def _not_whole(text: str, least: int | None) -> str:
    """Why ``text``, which ``int`` did not read, is refused, and what to pass: the whole number it equals
    (``-1e0``: ``-1``), or those either side of it (``1.5``: ``1 or 2``), each at least ``least``; text that
    is no number at all gets argparse's own words for ``int``."""
    try:
        number = float(text)
    except ValueError:
        return f"invalid int value: {text!r}"
    if not math.isfinite(number):
        return f"must be a whole number, got {text!r}: pass one in digits alone"
    if number == int(number):
        if least is not None and number < least:
            return f"must be {least} or more, got {int(number)} (given as {text!r})"
        return f"must be a whole number in digits alone, got {text!r}: pass {int(number)}"
    near = [str(w) for w in (math.floor(number), math.ceil(number)) if least is None or w >= least]
    return f"must be a whole number, got {text!r}" + (f": pass e.g. {' or '.join(near)}" if near else "")


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def saturation_value(text: str) -> float | str:
    """``--saturation``: a positive level, ``auto`` or ``none`` (:func:`deconv3d._saturation.parse_saturation`)."""
    from deconv3d._saturation import FORMS, parse_saturation

    try:
        return parse_saturation(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be {FORMS}, got {text!r}") from None


#: ``--saturation``'s help, for deconvolve and batch.
SATURATION_HELP = ("rl, rl-tv: fit voxels at or above LEVEL as clipped, their value a lower bound (a clipped "
                   "detector: 4095 for 12 bits, 65535 for 16); auto: the image's maximum where a plateau of voxels "
                   "holds it; none (default): fit every value as measured")


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def iterations_value(text: str) -> int | str:
    """``--iterations N|auto`` (deconvolve and batch)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number or auto, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse would print "invalid positive_int value"
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_optics(p: argparse.ArgumentParser, required: bool, per_channel: bool = False) -> None:
    """The microscope's options; ``per_channel``: ``--wavelength`` takes one value per channel, and
    a repeated ``--wavelength`` adds to them (as ``--psf``), where a second one used to replace the first."""
    g = p.add_argument_group("microscope (for generated PSFs)")
    g.add_argument("--na", type=positive_float, required=required, help="numerical aperture of the objective")
    if per_channel:
        g.add_argument("--wavelength", type=positive_float, nargs="+", action="extend", metavar="UM",
                       required=required, help="emission wavelength in µm, or one per channel of a multi-channel "
                       "input (--wavelength 0.5 0.6, or repeated: --wavelength 0.5 --wavelength 0.6)")
    else:
        g.add_argument("--wavelength", type=positive_float, required=required, help="emission wavelength in µm")
    g.add_argument("--ni", type=positive_float, default=1.515, help="immersion refractive index (default 1.515, oil)")
    g.add_argument("--ns", type=positive_float, default=1.33, help="sample refractive index (default 1.33, water; "
                   "gibson-lanni and vectorial only)")
    g.add_argument("--depth", type=float, default=0.0, help="depth below the coverslip in µm (default 0); the "
                   "PSF's z index runs from the coverslip into the sample")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
