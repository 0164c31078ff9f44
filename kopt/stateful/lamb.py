"""Stateful `Lamb`, a thin shell over `kopt.functional.lamb`."""

from __future__ import annotations

from kopt.functional.lamb import lamb
from kopt.stateful.optimizer import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer, factory=lamb):
    """Lamb (Adam with a per-tensor trust ratio), as `keras.optimizers.Lamb`.

    `get_weights()`: `[iterations, m of every variable, v of every variable]` (Keras's
    momentums, then velocities). The cross-cutting options append their state as
    described in `Optimizer.get_weights`.
    """

    _keras_slot_groups = (("m", "v"),)
