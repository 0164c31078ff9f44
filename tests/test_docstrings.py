"""Every docstring example in `kopt/` runs, under the suite's strict settings (#16.7).

The examples are collected here, not with `--doctest-modules`, so that they run with
`tests/conftest.py` in force (strict dtype promotion, rank promotion raising, 8 CPU
devices, warnings as errors) and spread over pytest-xdist workers like any other test.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import jax
import pytest

import kopt

_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules():
    names = [kopt.__name__]
    for info in pkgutil.walk_packages(kopt.__path__, prefix=kopt.__name__ + "."):
        names.append(info.name)
    return sorted(names)


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            # A name re-exported by a package is found twice: keep its home module's copy.
            if test.examples and test.name not in found:
                found[test.name] = test
    return [found[k] for k in sorted(found)]


_TESTS = _doctests()


def test_examples_are_found():
    """The collection sees the examples (a broken walk would silently run none)."""
    examples = sum(len(t.examples) for t in _TESTS)
    assert len(_TESTS) >= 50, [t.name for t in _TESTS]
    assert examples >= 250, examples
    names = {t.name for t in _TESTS}
    assert "kopt.functional.sharding.shard_state" in names
    assert "kopt.functional.adam.adam" in names


def test_no_example_is_skipped():
    """An example that cannot run is rewritten to run, not marked `+SKIP`."""
    skipped = [t.name for t in _TESTS for ex in t.examples if ex.options.get(doctest.SKIP)]
    assert not skipped, f"docstring examples marked +SKIP: {skipped}"


@pytest.mark.parametrize("test", _TESTS, ids=[t.name for t in _TESTS])
def test_docstring_example(test):
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    out = []
    test.globs = dict(test.globs)  # each run starts from the module's namespace, not the last run's
    # optax's own transforms mix int32 counts and Python floats, which strict promotion
    # refuses; an example that calls optax runs under standard promotion, as users' code does.
    uses_optax = any("optax." in ex.source for ex in test.examples)
    with jax.numpy_dtype_promotion("standard" if uses_optax else "strict"):
        result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)
    assert result.attempted == len(test.examples)
