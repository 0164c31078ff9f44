"""Stateful `Nadam`, a thin shell over `kopt.functional.nadam`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Nadam"]


class Nadam(Optimizer, factory=functional.nadam):
    """Nadam with the 0.96^t momentum schedule, as `keras.optimizers.Nadam`.

    `get_weights()`: `[iterations, momentum_cache, m of every variable, v of every variable]`;
    `momentum_cache` is the 0-d running product of the momentum schedule.
    """

    _keras_slot_groups = (("m", "v"),)
