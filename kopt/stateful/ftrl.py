"""Stateful `Ftrl`, a thin shell over `kopt.functional.ftrl`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Ftrl"]


class Ftrl(Optimizer, factory=functional.ftrl):
    """FTRL-Proximal, as `keras.optimizers.Ftrl`.

    `get_weights()`: `[iterations, then for each variable its accumulator and its linear]`
    (variable by variable, as tf.keras's Ftrl).
    """

    _keras_slot_groups = (("accumulator", "linear"),)
