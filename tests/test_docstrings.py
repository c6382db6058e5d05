"""The Examples sections of the package's docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import deconv3d

MODULES = sorted(m.name for m in pkgutil.walk_packages(deconv3d.__path__, "deconv3d.")
                 if not m.name.startswith(("deconv3d.cli", "deconv3d.__main__")))  # those run the CLI


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
