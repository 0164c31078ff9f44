"""Stateful `RMSprop`, a thin shell over `kopt.functional.rmsprop`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer, factory=functional.rmsprop):
    """RMSprop (epsilon inside the square root), as `keras.optimizers.RMSprop`."""

    _keras_slot_names = {"rms": "velocity", "mg": "average_gradient"}
