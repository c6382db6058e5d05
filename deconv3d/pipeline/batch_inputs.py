"""A batch's inputs and their outputs: the files (and .zarr folders) of the input folder that its
patterns find, in either case of their letters and outside hidden folders (each series of a bioformats2raw
folder that holds several being an input of its own), and the output each writes, inputs that would write the
same output refused up front."""

from __future__ import annotations

from pathlib import Path

from deconv3d._paths import TIFF_SUFFIXES, glob_shown, image_stem
from deconv3d.errors import InputError
from deconv3d.pipeline.settings import Settings

__all__ = ["find_inputs", "check_input_folder", "output_for", "record_name"]


def find_inputs(input_dir, patterns) -> list[Path]:
    """Files (and .zarr folders) in ``input_dir`` matching any glob pattern, sorted; hidden ones excluded,
    and everything in a hidden folder below ``input_dir`` (an output folder ``.out`` kept inside it, a
    file server's ``.snapshot``, a ``.Trash-1000``), which a ``**`` pattern reaches too, except where the
    pattern names the hidden part (``.raw/*.tif``; see :func:`~deconv3d._paths.glob_hides`); such folders
    are not entered (:func:`~deconv3d._paths.glob_shown`). A bioformats2raw folder found that holds several
    images (series ``0``, ``1``, ...), which one run refuses, gives each series as an input in its place."""
    input_dir = Path(input_dir)
    check_input_folder(input_dir)
    found = {p for pattern in patterns for p in glob_shown(input_dir, _any_case(pattern))}
    return sorted({series for path in found for series in _each_series(path)})


def check_input_folder(input_dir) -> None:
    """Refuse an input that is a file or no folder at all (the command line's first check of a batch, before
    its output folder's: a missing input is named first)."""
    input_dir = Path(input_dir)
    if input_dir.is_file():
        raise InputError(f"input {input_dir} is a file: batch takes a folder (every image in it that matches the "
                         "pattern); use 'deconv3d deconvolve' for one file")
    if not input_dir.is_dir():
        raise InputError(f"input folder not found: {input_dir}: check the path")


def _each_series(path: Path) -> list[Path]:
    """The series folders of the bioformats2raw folder ``path`` where it holds several, else ``[path]`` (a TIFF
    without a look at the disk: a folder may hold thousands)."""
    from deconv3d.omezarr.reading import bioformats2raw_series

    series = [] if path.suffix.lower() in TIFF_SUFFIXES else bioformats2raw_series(path)
    return [path / name for name in series] if len(series) > 1 else [path]


def _series_root(path: Path) -> Path | None:
    """The bioformats2raw folder of several series of which ``path`` is one (``cells.zarr`` for ``cells.zarr/1``),
    or None where it is none."""
    from deconv3d.omezarr.reading import bioformats2raw_series

    if not path.name.isdecimal():  # (no folder to open for the usual file)
        return None
    series = bioformats2raw_series(path.parent)
    return path.parent if len(series) > 1 and path.name in series else None


def _any_case(pattern: str) -> str:
    """``pattern`` matching letters in either case (``*.tif`` -> ``*.[tT][iI][fF]``): microscope
    software and Windows tools write ``.TIF``, which a batch skipped without a word, exit 0.
    Letters inside a ``[...]`` set are left as given."""
    out, inside = [], False
    for ch in pattern:
        if ch == "[" and not inside:
            inside = True
        elif ch == "]" and inside:
            inside = False
        elif ch.isalpha() and not inside and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
            continue
        out.append(ch)
    return "".join(out)


def output_for(input_path: Path, output_dir: Path, settings: Settings) -> Path:
    """``output_dir/NAME.FORMAT``, NAME the input's name less its image suffix only.

    ``cell.t001.tif`` gives ``cell.t001.zarr``: dots inside a name are kept, so that a time
    series of files does not collapse onto one output. A series of a bioformats2raw folder of several
    is named by the folder and the series: ``cells.zarr/1`` gives ``cells_1.zarr``.
    """
    root = _series_root(Path(input_path))
    stem = image_stem(input_path) if root is None else f"{image_stem(root)}_{Path(input_path).name}"
    return output_dir / f"{stem}.{settings.output_format}"


def record_name(input_path: Path) -> str:
    """The name an input's completion record takes (less ``.json``): the input's name, or for a series of a
    bioformats2raw folder of several, the folder's and the series' (``cells.zarr_1``): each such folder
    names its first series ``0``."""
    root = _series_root(Path(input_path))
    return Path(input_path).name if root is None else f"{root.name}_{Path(input_path).name}"


def _outputs_for(inputs, input_dir: Path, output_dir: Path, settings: Settings) -> list[Path]:
    """Each input's output; inputs that would write the same output are refused up front, in one
    line that names them by their path in ``input_dir`` (day1/a.tif and day2/a.tif) and lists every
    such clash, or the first :data:`CLASHES_SHOWN` and how many more."""
    outputs, owners = [], {}
    for path in inputs:
        output = output_for(path, output_dir, settings)
        # Cell.tif and cell.tiff: one folder on macOS's and Windows' disks
        owners.setdefault(str(output).casefold(), []).append((path, output))
        outputs.append(output)
    clashes = [_clash(group, Path(input_dir)) for group in owners.values() if len(group) > 1]
    if clashes:
        more = len(clashes) - CLASHES_SHOWN
        raise InputError("; ".join(clashes[:CLASHES_SHOWN]) + (f"; and {more} more such clash(es)" if more > 0 else "")
                         + ": rename one or narrow --pattern")
    return outputs


#: How many clashing output names the error of :func:`_outputs_for` spells out.
CLASHES_SHOWN = 3


def _clash(group: list, input_dir: Path) -> str:
    """"a/x.tif and b/x.tif would both write x.zarr" for the (input, output) pairs of one output."""
    names = [str(path.relative_to(input_dir)) for path, _ in group]
    output = group[-1][1]
    others = [o.name for o in dict.fromkeys(o for _, o in group) if o != output]
    case = f" (as {', '.join(others)}: one name on macOS and Windows disks)" if others else ""
    who = f"{names[0]} and {names[1]} would both" if len(names) == 2 else \
        f"{', '.join(names[:-1])} and {names[-1]} would all"
    return f"{who} write {output.name}{case}"
