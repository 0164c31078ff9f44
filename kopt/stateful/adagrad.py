"""Stateful `Adagrad`, a thin shell over `kopt.functional.adagrad`."""

from __future__ import annotations

from kopt import functional
from kopt.stateful.optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer, factory=functional.adagrad):
    """Adagrad, with Keras 3's initial accumulator and epsilon inside the root, as `keras.optimizers.Adagrad`.

    `get_weights()`: `[iterations, accumulator of every variable]`.
    """
