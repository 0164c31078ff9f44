"""Stateful `Lion`, a thin shell over `kopt.functional.lion`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Lion"]


class Lion(Optimizer, factory=functional.lion):
    """Lion (sign momentum), as `keras.optimizers.Lion`.

    `get_weights()`: `[iterations, momentum of every variable]`.
    """
