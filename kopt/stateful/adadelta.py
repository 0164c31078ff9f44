"""Stateful `Adadelta`, a thin shell over `kopt.functional.adadelta`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer, factory=functional.adadelta):
    """Adadelta, as `keras.optimizers.Adadelta`.

    `get_weights()`: `[iterations, accum_grad of every variable, accum_var of every variable]`.
    """

    _keras_slot_groups = (("accum_grad", "accum_var"),)
    _keras_slot_names = {"accum_grad": "accumulated_grad", "accum_var": "accumulated_delta_var"}
