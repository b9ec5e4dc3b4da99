"""Every example in a docstring runs and shows what it says (doctest over the whole package)."""

import doctest
import importlib
import pkgutil

import hpa_batch


def test_docstring_examples_run():
    tested = 0
    for info in pkgutil.walk_packages(hpa_batch.__path__, "hpa_batch."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, info.name
        tested += result.attempted
    assert tested >= 5  # the examples exist (ngff.level_shapes, segment)
