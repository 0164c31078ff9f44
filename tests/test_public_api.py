"""Every public name is re-exported explicitly and documented."""

import inspect

import pytest

import kopt
import kopt.functional
import kopt.optimizers
import kopt.schedules
import kopt.stateful

MODULES = [kopt, kopt.functional, kopt.optimizers, kopt.schedules, kopt.stateful]
PUBLIC = sorted({(m.__name__, name) for m in MODULES for name in m.__all__})


@pytest.mark.parametrize("module_name,name", PUBLIC)
def test_public_name_is_documented(module_name, name):
    module = next(m for m in MODULES if m.__name__ == module_name)
    obj = getattr(module, name)
    if obj is None or isinstance(obj, (int, float, str)):
        return  # constants are documented in their module
    assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw"])
def test_optimizer_docstring_has_rule_args_example_reference(name):
    doc = inspect.getdoc(getattr(kopt.functional, name))
    for part in ("math::", "Args:", "Example:", "Reference"):
        assert part in doc, f"kopt.functional.{name} docstring lacks {part!r}"


def test_layers_share_objects():
    assert kopt.optimizers.Adam is kopt.stateful.Adam is kopt.Adam
    assert kopt.optimizers.schedules.ExponentialDecay is kopt.schedules.ExponentialDecay
