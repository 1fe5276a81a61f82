"""Every docstring example in fp16cont runs and prints what it shows (those marked ``+SKIP`` need a user's model)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import keras
import numpy as np
import pytest

import fp16cont

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(fp16cont.__path__, "fp16cont.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    globs = {"keras": keras, "np": np, "fp16cont": fp16cont, **vars(module)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # performance advice about this CPU is not part of the examples
        result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"
