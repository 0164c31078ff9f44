"""Stateful `Adam`, a thin shell over `kopt.functional.adam`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adam"]


class Adam(Optimizer, factory=functional.adam):
    """Adam in Keras's epsilon-hat form, as `keras.optimizers.Adam`."""

    _keras_slot_groups = (("m", "v"), ("vhat",))
