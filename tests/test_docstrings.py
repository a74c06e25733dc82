"""Every docstring example in caa_lens and analysis runs and shows what it says (GUIDE section 5.7):
an example that drifted from the code fails here instead of misleading a reader."""

import doctest
import importlib
import pkgutil

import pytest

import analysis
import caa_lens

MODULES = sorted(
    f"{package.__name__}.{module.name}"
    for package in (caa_lens, analysis)
    for module in pkgutil.iter_modules(package.__path__)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
