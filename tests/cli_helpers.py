"""Helpers shared by the CLI tests: run ``deconv3d`` in-process, check its one-line errors and read
the properties of the TIFFs it writes."""

import json

import tifffile

from deconv3d.cli import main


def run(argv, capsys):
    """``main(argv)`` with every argument stringified: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    """Exit status 2 and exactly one ``deconv3d: error:`` line that names every word (any case)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deconv3d: error: "), err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def tiff_properties(path) -> dict:
    """A TIFF output's ImageJ properties as README's Reruns says to read them: each value by
    ``json.loads``, the text itself where that fails (a string that would read as JSON is stored
    JSON-quoted)."""
    with tifffile.TiffFile(path) as tif:
        stored = dict(tif.imagej_metadata["Properties"])

    def value(text):
        try:
            return json.loads(text)
        except ValueError:
            return text

    return {key: value(text) for key, text in stored.items()}


def full_disk_probe(monkeypatch, folder):
    """Make the output probe's file in ``folder`` fail as on a full disk (ENOSPC); other files are made as ever."""
    import errno
    import os
    import tempfile
    from pathlib import Path

    real = tempfile.NamedTemporaryFile

    def probe(*args, **kwargs):
        if Path(kwargs.get("dir") or ".") == folder and kwargs.get("prefix", "").startswith(".deconv3d-probe"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", probe)
