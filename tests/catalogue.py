"""The optimizer catalogue of the tests: one row per optimizer, read by every table-driven test.

A row names where the optimizer lives (its functional factory, its stateful class, its
registry key), the per-parameter state slots its functional state holds, its float64
reference in `tests/references*.py`, and example hyperparameters (a learning rate that
minimises the conformance quadratic of `tests/test_conformance.py` in 100 steps).

The names are resolved lazily (`Entry.factory`, `Entry.cls`), so a row whose export is
missing fails `tests/test_completeness.py` with the name of the missing place instead of
breaking the import of every test module. Adding an optimizer means adding its row here;
`tests/test_completeness.py` then lists every other place it still lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import kopt.functional
import kopt.optimizers

try:   # run from the repository root (pytest's pythonpath) or from tests/
    from tests import references as _ref
    from tests import references_adafactor_lamb as _ref_al
    from tests import references_beyond as _ref_beyond
    from tests import references_more as _ref_more
    from tests import references_muon_sf as _ref_msf
except ImportError:  # pragma: no cover
    import references as _ref
    import references_adafactor_lamb as _ref_al
    import references_beyond as _ref_beyond
    import references_more as _ref_more
    import references_muon_sf as _ref_msf

REFERENCE_MODULES = (_ref, _ref_al, _ref_beyond, _ref_more, _ref_msf)

# Stateful classes of `kopt.optimizers` that wrap another optimizer or a transform: they
# are not optimizers of their own, so the catalogue has no row for them.
WRAPPERS = ("Optimizer", "LossScaleOptimizer", "MultiOptimizer", "TransformOptimizer")


class Entry(NamedTuple):
    name: str                      # key in kopt.stateful.registry.ALL_OPTIMIZERS
    factory_name: str              # kopt.functional.<factory_name>
    class_name: str                # kopt.optimizers.<class_name>
    slots: tuple[str, ...]         # per-parameter slots of the functional state (with `hparams`)
    reference: Callable[..., Any]  # float64 reference: reference(params, grads_seq, **hparams)
    hparams: dict[str, Any]        # example hyperparameters (they minimise the quadratic)
    # The conformance quadratic: params start at `quadratic_start` and 100 steps bring the
    # loss under `quadratic_fraction` of its start.
    quadratic_start: float = 0.0
    quadratic_fraction: float = 0.02
    # Whether the first update scales with the learning rate (Ftrl's does not: its
    # learning rate also enters the denominator of the closed-form step).
    linear_in_learning_rate: bool = True
    # Updates at the start that leave the params where they are (ADOPT's first step only
    # records the second moment).
    silent_steps: int = 0
    # Hyperparameters that give the state every optional slot (RMSprop's `momentum` and
    # `mg`, Adam's and AdamW's `vhat`), on top of `hparams`: what the state-structure and
    # checkpoint tests run, so that every kind of slot is saved and mapped.
    every_slot: dict[str, Any] = {}

    @property
    def factory(self):
        return getattr(kopt.functional, self.factory_name)

    @property
    def cls(self):
        return getattr(kopt.optimizers, self.class_name)

    def make(self, **overrides):
        """The functional transform with the example hyperparameters and `overrides`."""
        return self.factory(**{**self.hparams, **overrides})

    def make_every_slot(self, **overrides):
        """The functional transform with every optional slot (`every_slot`) and `overrides`."""
        return self.make(**{**self.every_slot, **overrides})

    def make_stateful(self, **overrides):
        return self.cls(**{**self.hparams, **overrides})


CATALOGUE: tuple[Entry, ...] = (
    Entry("sgd", "sgd", "SGD", ("momentum",), _ref.sgd, dict(learning_rate=0.05, momentum=0.9)),
    Entry("rmsprop", "rmsprop", "RMSprop", ("rms",), _ref.rmsprop, dict(learning_rate=0.05),
          every_slot=dict(momentum=0.5, centered=True)),
    Entry("adam", "adam", "Adam", ("m", "v"), _ref.adam, dict(learning_rate=0.1),
          every_slot=dict(amsgrad=True)),
    Entry("adamw", "adamw", "AdamW", ("m", "v"), _ref.adamw, dict(learning_rate=0.1),
          every_slot=dict(amsgrad=True)),
    Entry("adadelta", "adadelta", "Adadelta", ("accum_grad", "accum_var"), _ref_more.adadelta,
          dict(learning_rate=100.0)),   # Adadelta starts with steps ~ sqrt(epsilon)
    Entry("adagrad", "adagrad", "Adagrad", ("accumulator",), _ref_more.adagrad,
          dict(learning_rate=0.5)),
    Entry("adamax", "adamax", "Adamax", ("m", "v"), _ref_more.adamax, dict(learning_rate=0.1)),
    Entry("nadam", "nadam", "Nadam", ("m", "v"), _ref_more.nadam, dict(learning_rate=0.1)),
    Entry("ftrl", "ftrl", "Ftrl", ("accumulator", "linear"), _ref_more.ftrl, dict(learning_rate=0.5),
          linear_in_learning_rate=False),
    Entry("lion", "lion", "Lion", ("momentum",), _ref_more.lion, dict(learning_rate=0.05),
          quadratic_fraction=0.05),
    Entry("adafactor", "adafactor", "Adafactor", ("r", "c", "v"), _ref_al.adafactor,
          dict(learning_rate=0.3)),
    Entry("lamb", "lamb", "Lamb", ("m", "v"), _ref_al.lamb, dict(learning_rate=0.1)),
    Entry("radam", "radam", "RAdam", ("m", "v"), _ref_beyond.radam, dict(learning_rate=0.1),
          quadratic_fraction=0.1),
    Entry("adabelief", "adabelief", "AdaBelief", ("m", "s"), _ref_beyond.adabelief,
          dict(learning_rate=0.1)),
    Entry("adan", "adan", "Adan", ("m", "v", "n", "prev_grad"), _ref_beyond.adan,
          dict(learning_rate=0.1)),
    Entry("ademamix", "ademamix", "AdEMAMix", ("m1", "m2", "nu"), _ref_beyond.ademamix,
          dict(learning_rate=0.05)),
    Entry("lars", "lars", "LARS", ("momentum",), _ref_beyond.lars, dict(learning_rate=20.0),
          quadratic_start=0.5, quadratic_fraction=0.1),   # the trust ratio needs |w| > 0
    Entry("adopt", "adopt", "ADOPT", ("m", "v"), _ref_beyond.adopt, dict(learning_rate=0.1),
          silent_steps=1),
    Entry("muon", "muon", "Muon", ("m", "v"), _ref_msf.muon, dict(learning_rate=0.2)),
    Entry("schedulefreeadamw", "schedule_free_adamw", "ScheduleFreeAdamW", ("z", "v"),
          _ref_msf.schedule_free_adamw, dict(learning_rate=0.1)),
)

BY_NAME: dict[str, Entry] = {e.name: e for e in CATALOGUE}
NAMES: tuple[str, ...] = tuple(BY_NAME)

# Other configurations worth a conformance run: (id, catalogue name, hyperparameters).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sgd-plain", "sgd", dict(learning_rate=0.1)),
    ("sgd-nesterov", "sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop-centered-momentum", "rmsprop",
     dict(learning_rate=0.01, momentum=0.9, centered=True)),
    ("adam-amsgrad", "adam", dict(learning_rate=0.1, amsgrad=True)),
)


def configurations() -> list[tuple[str, Entry]]:
    """Every catalogue row and variant as (id, row); a variant's row has its hyperparameters."""
    rows = [(e.name, e) for e in CATALOGUE]
    rows += [(vid, BY_NAME[name]._replace(hparams=dict(kw))) for vid, name, kw in VARIANTS]
    return rows
