"""Helpers shared by the CLI tests: run ``deconv3d`` in-process and check its one-line errors."""

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
