"""Every optimizer is in every place it must be, and the test names the place it lacks (#16.5).

The places an optimizer needs (`PLACES`):

- a row in `tests/catalogue.py` (which drives the conformance and config tests);
- its functional factory exported from `kopt.functional`;
- its stateful class exported from `kopt.optimizers` and from the top-level `kopt`;
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

import inspect
import pathlib
import re
import types

import pytest

import kopt
import kopt.functional as kf
import kopt.optimizers as ko
from kopt.stateful.registry import ALL_OPTIMIZERS
from tests.catalogue import BY_NAME, CATALOGUE, REFERENCE_MODULES, WRAPPERS, Entry

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

CATALOGUE_ROW = "a row in tests/catalogue.py"
FUNCTIONAL = "an export in kopt.functional"
OPTIMIZERS = "an export in kopt.optimizers"
TOP_LEVEL = "an export in the top-level kopt"
REGISTRY = "an entry in kopt.stateful.registry.ALL_OPTIMIZERS"
README_ROW = "a row in the README's optimizer tables"
REFERENCE = "a float64 reference in tests/references*.py"
RULE = "the update rule (math::) in the functional factory's docstring"
EXAMPLE = "an example (>>>) in the functional factory's docstring"
CLASS_EXAMPLE = "an example (>>>) in the stateful class's docstring"
PLACES = (CATALOGUE_ROW, FUNCTIONAL, OPTIMIZERS, TOP_LEVEL, REGISTRY, README_ROW, REFERENCE,
          RULE, EXAMPLE, CLASS_EXAMPLE)


def readme_has_row(readme: str, factory_name: str, class_name: str) -> bool:
    row = (rf"^\|[^|\n]*\|\s*`kopt\.functional\.{re.escape(factory_name)}`\s*"
           rf"\|\s*`kopt\.optimizers\.{re.escape(class_name)}`\s*\|")
    return re.search(row, readme, re.MULTILINE) is not None


def is_reference(fn) -> bool:
    return any(getattr(m, getattr(fn, "__name__", ""), None) is fn for m in REFERENCE_MODULES)


def missing_places(entry: Entry, *, readme: str = README, registry=ALL_OPTIMIZERS,
                   catalogue=BY_NAME, functional=kf) -> list[str]:
    """The places of `PLACES` where `entry`'s optimizer is missing."""
    missing = []
    if catalogue.get(entry.name) != entry:
        missing.append(CATALOGUE_ROW)
    factory = getattr(functional, entry.factory_name, None)
    if factory is None or entry.factory_name not in functional.__all__:
        missing.append(FUNCTIONAL)
    cls = getattr(ko, entry.class_name, None)
    if cls is None or entry.class_name not in ko.__all__:
        missing.append(OPTIMIZERS)
    if getattr(kopt, entry.class_name, None) is not cls or entry.class_name not in kopt.__all__:
        missing.append(TOP_LEVEL)
    if cls is None or registry.get(entry.name) is not cls:
        missing.append(REGISTRY)
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


@pytest.mark.parametrize("place", [CATALOGUE_ROW, REGISTRY, README_ROW])
def test_leaving_one_place_out_names_that_place(place):
    entry = BY_NAME["adam"]
    readme, registry, catalogue = README, dict(ALL_OPTIMIZERS), dict(BY_NAME)
    if place == README_ROW:
        readme = README.replace("| `kopt.functional.adam` | `kopt.optimizers.Adam` |", "")
    elif place == REGISTRY:
        del registry["adam"]
    else:
        del catalogue["adam"]
    assert missing_places(entry, readme=readme, registry=registry, catalogue=catalogue) == [place]


def test_an_undocumented_or_unreferenced_optimizer_names_those_places():
    def adam(learning_rate=0.001):
        """Adam without its update rule or an example."""
        return kf.adam(learning_rate)

    functional = types.SimpleNamespace(adam=adam, __all__=["adam"])
    entry = BY_NAME["adam"]._replace(reference=_adopt_like().reference)
    missing = missing_places(entry, functional=functional)
    # The row differs from the catalogue's (its reference), which is not in tests/references*.py.
    assert missing == [CATALOGUE_ROW, REFERENCE, RULE, EXAMPLE]
