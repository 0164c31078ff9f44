"""Every optimizer is in every place it must be, and the test names the place it lacks (#16.5).

The places an optimizer needs (`PLACES`):

- a row in `tests/catalogue.py` (which drives the conformance and config tests);
- its functional factory exported from `kopt.functional` (`kopt/functional/__init__.py`);
- its stateful class exported from `kopt/stateful/classes.py`, the one list of classes that
  `kopt.stateful`, `kopt.optimizers` and the top-level `kopt` re-export (those three name
  no optimizer themselves: `test_the_packages_re_export_the_one_class_list`);
- its class in the registry `kopt.stateful.registry.ALL_OPTIMIZERS` (string identifiers,
  `deserialize`);
- a row in the README's catalogue tables;
- a float64 reference in `tests/references*.py`;
- its documentation, which is its docstrings: the factory's gives the update rule
  (`math::`) and a runnable example (`>>>`, run by `tests/test_docstrings.py`), and the
  class's gives an example.

An optimizer is found wherever it already is (the registry, the exported classes and
factories, the README), so one that was added in some places and forgotten in others fails
here with the list of the places it still lacks.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
import types

import pytest

import kopt.functional as kf
import kopt.optimizers as ko
import kopt.stateful.classes as kc
from kopt.stateful.registry import ALL_OPTIMIZERS
from tests.catalogue import BY_NAME, CATALOGUE, REFERENCE_MODULES, WRAPPERS, Entry

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

CATALOGUE_ROW = "a row in tests/catalogue.py"
FUNCTIONAL = "an export in kopt.functional"
CLASS = "an export in kopt/stateful/classes.py (re-exported by kopt.optimizers and kopt)"
REGISTRY = "an entry in kopt.stateful.registry.ALL_OPTIMIZERS"
README_ROW = "a row in the README's optimizer tables"
REFERENCE = "a float64 reference in tests/references*.py"
RULE = "the update rule (math::) in the functional factory's docstring"
EXAMPLE = "an example (>>>) in the functional factory's docstring"
CLASS_EXAMPLE = "an example (>>>) in the stateful class's docstring"
PLACES = (CATALOGUE_ROW, FUNCTIONAL, CLASS, REGISTRY, README_ROW, REFERENCE, RULE, EXAMPLE,
          CLASS_EXAMPLE)


def readme_has_row(readme: str, factory_name: str, class_name: str) -> bool:
    row = (rf"^\|[^|\n]*\|\s*`kopt\.functional\.{re.escape(factory_name)}`\s*"
           rf"\|\s*`kopt\.optimizers\.{re.escape(class_name)}`\s*\|")
    return re.search(row, readme, re.MULTILINE) is not None


def is_reference(fn) -> bool:
    return any(getattr(m, getattr(fn, "__name__", ""), None) is fn for m in REFERENCE_MODULES)


def _exported(module, name: str):
    """`module.<name>` if `name` is in `module.__all__`, else None."""
    return getattr(module, name, None) if name in module.__all__ else None


def missing_places(entry: Entry, *, readme: str = README, registry=ALL_OPTIMIZERS,
                   catalogue=BY_NAME, functional=kf, classes=kc) -> list[str]:
    """The places of `PLACES` where `entry`'s optimizer is missing."""
    missing = []
    if catalogue.get(entry.name) != entry:
        missing.append(CATALOGUE_ROW)
    factory = _exported(functional, entry.factory_name)
    if factory is None:
        missing.append(FUNCTIONAL)
    cls = _exported(classes, entry.class_name)
    if cls is None:
        missing.append(CLASS)
    registered = registry.get(entry.name)
    if registered is None or registered is not (cls or registered) \
            or registered.__name__ != entry.class_name:
        missing.append(REGISTRY)
    cls = cls or registered   # a class registered but not exported still has its docstring
    if not readme_has_row(readme, entry.factory_name, entry.class_name):
        missing.append(README_ROW)
    if not is_reference(entry.reference):
        missing.append(REFERENCE)
    doc = (inspect.getdoc(factory) or "") if factory is not None else ""
    if "math::" not in doc:
        missing.append(RULE)
    if ">>>" not in doc:
        missing.append(EXAMPLE)
    if ">>>" not in ((inspect.getdoc(cls) or "") if cls is not None else ""):
        missing.append(CLASS_EXAMPLE)
    return missing


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_optimizer_is_in_every_place(entry):
    missing = missing_places(entry)
    assert not missing, f"{entry.name} lacks: " + "; ".join(missing)


def _found_elsewhere() -> dict[str, list[str]]:
    """Optimizers found outside the catalogue, keyed by registry name, with where."""
    found: dict[str, list[str]] = {}
    for name in ALL_OPTIMIZERS:
        found.setdefault(name, []).append(REGISTRY)
    for name in ko.__all__:
        obj = getattr(ko, name)
        if isinstance(obj, type) and issubclass(obj, ko.Optimizer) and name not in WRAPPERS:
            found.setdefault(name.lower(), []).append(f"kopt.optimizers.{name}")
    for name in kf.__all__:
        obj = getattr(kf, name)
        doc = inspect.getdoc(obj) or ""
        if callable(obj) and "math::" in doc and "learning_rate" in _parameters(obj):
            found.setdefault(name.replace("_", ""), []).append(f"kopt.functional.{name}")
    for factory, cls in re.findall(r"^\|[^|\n]*\|\s*`kopt\.functional\.(\w+)`\s*"
                                   r"\|\s*`kopt\.optimizers\.(\w+)`\s*\|", README, re.MULTILINE):
        found.setdefault(cls.lower(), []).append(f"README row {factory}/{cls}")
    return found


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def test_every_optimizer_found_anywhere_has_a_catalogue_row():
    """An optimizer in the registry, the exports or the README but not in the catalogue."""
    extra = {name: where for name, where in _found_elsewhere().items() if name not in BY_NAME}
    assert not extra, (
        "optimizers without a row in tests/catalogue.py (found in): "
        + "; ".join(f"{name} ({', '.join(where)})" for name, where in sorted(extra.items())))


def test_catalogue_slots_are_the_states_slots():
    """The catalogue's slot names are the per-parameter slots of the functional state."""
    import jax.numpy as jnp
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    for entry in CATALOGUE:
        state = entry.make().init(params)
        slots = tuple(f for f in state._fields if isinstance(getattr(state, f), kf.Packed))
        assert slots == entry.slots, (entry.name, slots)


# ------------------------------------------------------------------ the check itself


def _adopt_like():
    """A new optimizer, named but nowhere yet: as a contributor's first step would be."""
    return Entry("adoptx", "adoptx", "ADOPTX", ("m", "v"), lambda params, grads_seq: [], {})


def test_a_new_optimizer_lacks_every_place_and_each_is_named():
    missing = missing_places(_adopt_like())
    assert missing == list(PLACES)


def _without(module, name: str) -> types.SimpleNamespace:
    """`module`'s exports, less `name` (as if its line in the export list were missing)."""
    names = [n for n in module.__all__ if n != name]
    return types.SimpleNamespace(__all__=names, **{n: getattr(module, n) for n in names})


@pytest.mark.parametrize("place", [CATALOGUE_ROW, FUNCTIONAL, CLASS, REGISTRY, README_ROW])
def test_leaving_one_place_out_names_that_place(place):
    entry = BY_NAME["adam"]
    readme, registry, catalogue = README, dict(ALL_OPTIMIZERS), dict(BY_NAME)
    functional, classes = kf, kc
    if place == README_ROW:
        readme = README.replace("| `kopt.functional.adam` | `kopt.optimizers.Adam` |", "")
    elif place == REGISTRY:
        del registry["adam"]
    elif place == FUNCTIONAL:
        functional = _without(kf, "adam")
    elif place == CLASS:
        classes = _without(kc, "Adam")
    else:
        del catalogue["adam"]
    missing = missing_places(entry, readme=readme, registry=registry, catalogue=catalogue,
                             functional=functional, classes=classes)
    if place == FUNCTIONAL:   # the docstring checks read the exported factory
        assert missing == [FUNCTIONAL, RULE, EXAMPLE]
    else:
        assert missing == [place]


PACKAGES = ("kopt/__init__.py", "kopt/stateful/__init__.py", "kopt/optimizers/__init__.py")


@pytest.mark.parametrize("path", PACKAGES)
def test_the_packages_re_export_the_one_class_list(path):
    """`kopt`, `kopt.stateful` and `kopt.optimizers` re-export `kopt/stateful/classes.py`:
    none of them names an optimizer class (an import or an `__all__` entry), so a new
    optimizer's class has one export place; and each exports every class, the same object."""
    root = pathlib.Path(__file__).resolve().parent.parent
    tree = ast.parse((root / path).read_text(encoding="utf-8"))
    classes = set(kc.__all__)
    named = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             for a in n.names} | {n.value for n in ast.walk(tree)
                                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not named & classes, f"{path} names {sorted(named & classes)}: export them in " \
        "kopt/stateful/classes.py only"
    module = importlib.import_module(path.removesuffix("/__init__.py").replace("/", "."))
    for name in kc.__all__:
        assert name in module.__all__ and getattr(module, name) is getattr(kc, name), name


def test_an_undocumented_or_unreferenced_optimizer_names_those_places():
    def adam(learning_rate=0.001):
        """Adam without its update rule or an example."""
        return kf.adam(learning_rate)

    functional = types.SimpleNamespace(adam=adam, __all__=["adam"])
    entry = BY_NAME["adam"]._replace(reference=_adopt_like().reference)
    missing = missing_places(entry, functional=functional)
    # The row differs from the catalogue's (its reference), which is not in tests/references*.py.
    assert missing == [CATALOGUE_ROW, REFERENCE, RULE, EXAMPLE]
