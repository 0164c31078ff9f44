"""Stateful `Adamax`, a thin shell over `kopt.functional.adamax`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adamax"]


class Adamax(Optimizer, factory=functional.adamax):
    """Adamax (Adam with the infinity norm), as `keras.optimizers.Adamax`.

    `get_weights()`: `[iterations, m of every variable, v (the norm) of every variable]`.
    """

    _keras_slot_groups = (("m", "v"),)
    _keras_slot_names = {"v": "norm"}
